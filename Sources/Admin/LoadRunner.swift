import Foundation
import Histogram

/// Latency statistics of a benchmark run (microseconds).
public struct LatencySummary: Sendable, Codable {
    public var operations: UInt64
    public var errors: UInt64
    public var seconds: Double
    public var throughput: Double
    public var p50: UInt64, p95: UInt64, p99: UInt64, max: UInt64
    public var errorsByCode: [String: UInt64]
    /// The first failure's message for each code, so that a rare error says what it was.
    public var firstErrorByCode: [String: String]

    public var line: String {
        String(format: "%.0f ops/s  (%llu ops, %llu errors in %.1f s)  latency µs p50 %llu  p95 %llu  p99 %llu  max %llu",
               throughput, operations, errors, seconds, p50, p95, p99, max)
    }
}

/// One second of a run: what `bench --timeline` writes, one JSON line each, so a dip shows.
public struct TimelinePoint: Sendable, Codable {
    /// Seconds since the run began (this point covers `[second, second + 1)`).
    public var second: Int
    public var operations: Int
    public var errors: Int
    /// Latency of the operations that finished in this second (µs); 0 when none did.
    public var p99Us: UInt32
    public var maxUs: UInt32
    enum CodingKeys: String, CodingKey { case second = "t", operations = "ops", errors, p99Us = "p99_us", maxUs = "max_us" }
}

/// Runs `clients` concurrent loops of `operation` for `duration`, with a live progress line.
public enum LoadRunner {
    /// With `timeline`, each second's operations, errors, p99 and max are kept and handed to it
    /// at the end, in order.
    public static func run(
        clients: Int, duration: Duration, progress: (@Sendable (String) -> Void)? = nil,
        timeline: (@Sendable ([TimelinePoint]) -> Void)? = nil,
        executor: @escaping @Sendable (_ client: Int) -> (any TaskExecutor)? = { _ in nil },
        operation: @escaping @Sendable (_ client: Int) async throws -> Void,
        errorCode: @escaping @Sendable (any Error) -> String = { String(describing: type(of: $0)) }
    ) async -> LatencySummary {
        // The message of the first failure of each code: enough to tell what a rare error was.
        func firstMessages(_ into: inout [String: String], _ code: String, _ error: any Error) {
            if into[code] == nil { into[code] = String(String(describing: error).prefix(300)) }
        }
        let clock = ContinuousClock()
        let start = clock.now
        let end = start + duration
        struct Partial: Sendable {
            var histogram: Histogram<UInt64>
            var errors: [String: UInt64]
            var firstErrors: [String: String] = [:]
            var latencies: [Int: [UInt32]] = [:]
            var failures: [Int: Int] = [:]
        }
        let keepTimeline = timeline != nil
        let merged = await withTaskGroup(of: Partial.self) { group in
            for client in 0..<clients {
                group.addTask(executorPreference: executor(client)) {
                    var h = Histogram<UInt64>(highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
                    var errors: [String: UInt64] = [:]
                    var firstErrors: [String: String] = [:]
                    var latencies: [Int: [UInt32]] = [:]
                    var failures: [Int: Int] = [:]
                    while clock.now < end {
                        let t0 = clock.now
                        do {
                            try await operation(client)
                            let done = clock.now
                            let us = (done - t0).components
                            let micros = UInt64(us.seconds) * 1_000_000 + UInt64(us.attoseconds / 1_000_000_000_000)
                            _ = h.record(micros)
                            if keepTimeline { latencies[Int((done - start).components.seconds), default: []].append(UInt32(min(micros, UInt64(UInt32.max)))) }
                        } catch {
                            let code = errorCode(error)
                            errors[code, default: 0] += 1
                            firstMessages(&firstErrors, code, error)
                            if keepTimeline { failures[Int((clock.now - start).components.seconds), default: 0] += 1 }
                        }
                    }
                    return Partial(histogram: h, errors: errors, firstErrors: firstErrors, latencies: latencies, failures: failures)
                }
            }
            if let progress {
                group.addTask {
                    while clock.now < end {
                        try? await Task.sleep(for: .seconds(1))
                        let left = max(0, Int(((end - clock.now) / .seconds(1)).rounded(.up)))
                        progress("running… \(left) s left")
                    }
                    return Partial(histogram: Histogram<UInt64>(highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three), errors: [:])
                }
            }
            var total = Histogram<UInt64>(highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
            var errors: [String: UInt64] = [:]
            var firstErrors: [String: String] = [:]
            var latencies: [Int: [UInt32]] = [:]
            var failures: [Int: Int] = [:]
            for await partial in group {
                total.add(partial.histogram)
                errors.merge(partial.errors, uniquingKeysWith: +)
                firstErrors.merge(partial.firstErrors) { first, _ in first }
                latencies.merge(partial.latencies, uniquingKeysWith: +)
                failures.merge(partial.failures, uniquingKeysWith: +)
            }
            return Partial(histogram: total, errors: errors, firstErrors: firstErrors, latencies: latencies, failures: failures)
        }
        if let timeline {
            let last = max(merged.latencies.keys.max() ?? 0, merged.failures.keys.max() ?? 0)
            timeline((0...last).map { second in
                let sorted = (merged.latencies[second] ?? []).sorted()
                let p99 = sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int((Double(sorted.count) * 0.99).rounded(.up)) - 1)]
                return TimelinePoint(second: second, operations: sorted.count, errors: merged.failures[second] ?? 0, p99Us: p99, maxUs: sorted.last ?? 0)
            })
        }
        let seconds = Double((clock.now - start).components.seconds) + Double((clock.now - start).components.attoseconds) / 1e18
        let h = merged.histogram
        return LatencySummary(operations: h.totalCount, errors: merged.errors.values.reduce(0, +), seconds: seconds,
                              throughput: Double(h.totalCount) / seconds,
                              p50: h.valueAtPercentile(50), p95: h.valueAtPercentile(95), p99: h.valueAtPercentile(99), max: h.max,
                              errorsByCode: merged.errors, firstErrorByCode: merged.firstErrors)
    }
}
