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

    /// SplitMix64's finalizer.
    public static func mix64(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
