/// The ledger's per-account balance ceiling, and the one place where a balance changes: checked
/// arithmetic that answers with a refusal instead of trapping on overflow.
///
/// The ceiling keeps every balance far inside both `Int64` minor units (≈ 92 quadrillion) and
/// DECIMAL(19,2) (≈ 100 quadrillion), so sums of many balances stay exact in `Int128`.
public struct BalanceLimit: Sendable, Hashable {
    /// 1,000,000,000,000.00: a trillion in major units.
    public static let defaultCeiling = Money(minorUnits: 100_000_000_000_000)
    /// The highest ceiling a deployment may configure: 1,000,000,000,000,000.00.
    public static let maximumCeiling = Money(minorUnits: 100_000_000_000_000_000)

    /// The highest balance an account may hold.
    public let ceiling: Money

    /// What adding an amount to a balance gives.
    public enum Outcome: Sendable, Hashable {
        case balance(Int64)
        case belowZero
        case aboveCeiling
    }

    /// - Precondition: `0 < ceiling ≤ maximumCeiling` (configuration checks it before).
    public init(ceiling: Money = BalanceLimit.defaultCeiling) {
        precondition(ceiling.minorUnits > 0 && ceiling <= Self.maximumCeiling, "balance ceiling out of range")
        self.ceiling = ceiling
    }

    /// `balance + delta`, refused below zero or above the ceiling — also when the sum overflows.
    public func apply(_ delta: Int64, to balance: Int64) -> Outcome {
        let (sum, overflow) = balance.addingReportingOverflow(delta)
        if overflow { return delta < 0 ? .belowZero : .aboveCeiling }
        if sum < 0 { return .belowZero }
        if sum > ceiling.minorUnits { return .aboveCeiling }
        return .balance(sum)
    }
}
