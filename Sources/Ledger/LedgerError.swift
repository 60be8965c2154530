import MariaDB

/// An error of the ledger, with a stable code that the HTTP layer maps to a status in one place.
public struct LedgerError: Error, Sendable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        public let rawValue: String
        init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The distributed transaction was rolled back everywhere: nothing changed. Safe to retry.
        public static let aborted = Code("aborted")
        /// The decision could not be learnt (the commit-point node stopped answering at the commit).
        /// The in-doubt resolver will finish it; read the transfer later.
        public static let outcomeUnknown = Code("outcome_unknown")
        /// A node the operation needs is unknown or unreachable.
        public static let nodeUnavailable = Code("node_unavailable")
        /// No such account.
        public static let notFound = Code("not_found")
        /// The debited account holds less than the amount.
        public static let insufficientFunds = Code("insufficient_funds")
        /// The idempotency key was used before for a different request.
        public static let idempotencyConflict = Code("idempotency_conflict")
        /// The movement would take a balance above the ledger's per-account limit.
        public static let balanceLimit = Code("balance_limit")
        /// A range the operation needs is frozen for a move that did not switch within
        /// `ledger.move_wait_ms`: nothing changed; retry shortly with the same key.
        public static let rangeMoving = Code("range_moving")
        /// The request itself is invalid (amount, accounts).
        public static let invalid = Code("invalid_request")
    }

    public var code: Code
    public var message: String
    /// The node involved, if one.
    public var node: String?
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, node: String? = nil, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.node = node
        self.underlying = underlying
    }

    public var description: String {
        "LedgerError(\(code))" + (node.map { " on \($0)" } ?? "") + ": " + message
    }
}

/// Thrown by a test's crash point (`FaultInjector`) to stop a coordinator at a step as if its process had died: it then drops
/// its connections without rolling anything back, leaving the servers as a crash would.
public struct CoordinatorCrash: Error, Sendable {
    public init() {}
}
