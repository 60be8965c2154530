/// The stable 64-bit hash that places an account id in the directory map.
///
/// It is the SplitMix64 finalizer (Steele, Lea & Flood 2014; the constants of Java's
/// `SplittableRandom.mix64`): a bijection on 64 bits, so two account ids never share a hash, and
/// sequential ids spread evenly over the key domain. Its output is part of the on-disk format:
/// changing it would misplace every directory entry, so `DirectoryHashTests` pins fixed vectors.
public enum DirectoryHash {
    /// The directory key of `accountID`, in the signed `Int64` domain of the range map.
    public static func key(forAccount accountID: Int64) -> Int64 {
        Int64(bitPattern: mix64(UInt64(bitPattern: accountID)))
    }

    /// The directory key of an idempotency key: FNV-1a 64 over its UTF-8 bytes (byte for byte, as
    /// the database compares keys), then the finalizer. It places the decision of an account
    /// opening on the node owning that directory range, so a key's earlier use is found there
    /// whatever balance the request carries. Part of the on-disk format too: pinned by tests.
    public static func key(forIdempotencyKey key: String) -> Int64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in key.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return Int64(bitPattern: mix64(h))
    }

    /// SplitMix64's finalizer.
    public static func mix64(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
