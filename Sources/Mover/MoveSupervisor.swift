import ClusterMetadata
import Logging
import Moves
import ServiceLifecycle

/// Runs, inside `serve`, the moves and splits no `ctl` runs: those asked of the HTTP admin routes
/// (`run_by: serve`), and any move whose runner died while its range cannot be written (`frozen` …
/// `published`), which is rolled forward within the owner lease's TTL and a poll rather than
/// waiting for an operator. Every `serve` runs one; the job's owner key decides which one runs a
/// job. One job at a time per process.
public struct MoveSupervisor: Service {
    let mover: RangeMover
    let splitter: RangeSplitter?
    let rebalancer: Rebalancer?
    let drainer: NodeDrainer?
    let interval: Duration
    let logger: Logger

    /// `mover` should not wait for ownership (``RangeMover/Options/claimWait`` zero): another
    /// `serve` holding a job is simply left to it.
    public init(mover: RangeMover, splitter: RangeSplitter? = nil, rebalancer: Rebalancer? = nil, drainer: NodeDrainer? = nil,
                interval: Duration = .seconds(1), logger: Logger) {
        self.mover = mover
        self.splitter = splitter
        self.rebalancer = rebalancer
        self.drainer = drainer
        self.interval = interval
        self.logger = logger
    }

    /// Whether a job is this supervisor's to take up (its owner key is checked by the claim).
    static func wants(_ job: JobRecord) -> Bool {
        if job.kind == .rebalance || job.kind == .drain { return !job.finished && job.runBy == "serve" && job.error == nil }
        if job.kind == .split {
            guard let phase = SplitPhase(rawValue: job.phase), !phase.finished else { return false }
            return job.runBy == "serve" && job.error == nil
        }
        guard job.kind == .move, let phase = MovePhase(rawValue: job.phase), !phase.finished else { return false }
        if phase.rangeUnwritable { return true }
        // A job asked of serve, not stopped for an operator (its error says why; they resume it).
        return job.runBy == "serve" && job.error == nil
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await passOnce()
                try? await Task.sleep(for: interval)
            }
        }
    }

    /// One look at the jobs; runs each wanted one that nobody owns.
    public func passOnce() async {
        let jobs: [StoredJob]
        do { jobs = try await mover.store.jobs() } catch {
            logger.debug("move supervisor: jobs not readable", metadata: ["error": "\(error)"])
            return
        }
        for job in jobs where Self.wants(job.record) && (job.record.kind == .move || job.record.kind == .split && splitter != nil || job.record.kind == .rebalance && rebalancer != nil
                                                              || job.record.kind == .drain && drainer != nil) {
            guard (try? await mover.store.jobOwner(job.record.id)) == .some(nil) else { continue }
            logger.notice("move supervisor: taking up job", metadata: ["job": "\(job.record.id)", "phase": "\(job.record.phase)"])
            do {
                let record: JobRecord
                let command: RangeMover.Command = job.record.cancelRequested == true ? .cancel : .resume
                if job.record.kind == .drain, let drainer {
                    record = try await drainer.run(job.record.id, command)
                } else if job.record.kind == .rebalance, let rebalancer {
                    record = try await rebalancer.run(job.record.id).job
                } else if job.record.kind == .split, let splitter {
                    record = try await splitter.run(job.record.id, command)
                } else {
                    record = try await mover.run(job.record.id, command)
                }
                logger.notice("move supervisor: job ended or stopped", metadata: ["job": "\(record.id)", "phase": "\(record.phase)", "error": "\(record.error ?? "")"])
            } catch let error as MoveError where error.code == .superseded {
                logger.debug("move supervisor: another runner has the job", metadata: ["job": "\(job.record.id)"])
            } catch {
                logger.warning("move supervisor: job failed", metadata: ["job": "\(job.record.id)", "error": "\(error)"])
            }
        }
    }
}
