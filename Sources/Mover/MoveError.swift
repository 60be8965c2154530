/// Why a move was refused or stopped: a stable code and a sentence that says what to do.
public struct MoveError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        /// Bad input: unknown range or node, the owner as target, a map that cannot move yet.
        case invalid
        /// No such job.
        case notFound
        /// The cluster is not as the move expects (a range in another job, a target that holds it).
        case conflict
        /// Another runner owns the job, or took it over: this one stops and changes nothing.
        case superseded
        /// The target's copy differs from the source in a way the catch-up cannot explain.
        case mismatch
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    static func superseded(_ spec: MoveSpec, _ epoch: Int64?) -> MoveError {
        MoveError(.superseded, "the move of \(spec.map) range \(spec.range) was taken over by another runner (\(spec.target)'s row is at epoch \(epoch.map(String.init) ?? "none"), this runner's is \(spec.targetEpoch)); this runner stops")
    }
}
