import ClusterMetadata
import Foundation
import Moves

/// Resume and cancel asked over HTTP: the job is handed to the `serve`s (`run_by: serve`, the
/// request recorded), and the one whose ``MoveSupervisor`` claims it first runs it. Refused, with
/// nothing written: an unknown job, one that has ended, one a runner holds now, and a cancel the
/// job's phase no longer allows.
public enum JobRequests {
    public static func request(_ command: RangeMover.Command, job id: String, store: MetadataStore) async throws -> JobRecord {
        guard let job = try await store.job(id) else { throw MoveError(.notFound, "there is no job \(id); GET /v1/cluster/jobs lists them") }
        var record = job.record
        guard !record.finished else { throw MoveError(.invalid, "job \(id) has ended (\(record.phase)); there is nothing to \(command == .cancel ? "cancel" : "resume")") }
        if let owner = try await store.jobOwner(id) {
            throw MoveError(.superseded, "job \(id) is being run by \(owner); wait for it, or stop that process first")
        }
        if command == .cancel {
            let allowed: Bool
            switch record.kind {
            case .move: allowed = MovePhase(rawValue: record.phase).map { $0.cancellable || $0 == .cancelling } ?? false
            case .split: allowed = SplitPhase(rawValue: record.phase).map { $0.cancellable || $0 == .cancelling } ?? false
            case .drain: allowed = true // a drain stops where it is; what moved stays moved
            case .rebalance: allowed = false
            }
            guard allowed else {
                throw MoveError(.invalid, record.kind == .rebalance ? "a rebalance is not cancelled: cancel its unfinished step (a job whose parent is \(id))"
                                : "job \(id) is \(record.phase): past the point where it can be undone; resume it instead")
            }
        }
        record.runBy = "serve"
        record.error = nil
        record.cancelRequested = command == .cancel
        record.updatedAt = Date()
        do {
            _ = try await store.updateJob(record, expectedRevision: job.modRevision)
        } catch {
            throw MoveError(.superseded, "job \(id) changed while this request was made; look again")
        }
        return record
    }
}
