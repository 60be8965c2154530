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

    public var line: String {
        String(format: "%.0f ops/s  (%llu ops, %llu errors in %.1f s)  latency µs p50 %llu  p95 %llu  p99 %llu  max %llu",
               throughput, operations, errors, seconds, p50, p95, p99, max)
    }
}

/// Runs `clients` concurrent loops of `operation` for `duration`, with a live progress line.
public enum LoadRunner {
    public static func run(
        clients: Int, duration: Duration, progress: (@Sendable (String) -> Void)? = nil,
        executor: @escaping @Sendable (_ client: Int) -> (any TaskExecutor)? = { _ in nil },
        operation: @escaping @Sendable (_ client: Int) async throws -> Void,
        errorCode: @escaping @Sendable (any Error) -> String = { String(describing: type(of: $0)) }
    ) async -> LatencySummary {
        let clock = ContinuousClock()
        let start = clock.now
        let end = start + duration
        struct Partial: Sendable { var histogram: Histogram<UInt64>; var errors: [String: UInt64] }
        let merged = await withTaskGroup(of: Partial.self) { group in
            for client in 0..<clients {
                group.addTask(executorPreference: executor(client)) {
                    var h = Histogram<UInt64>(highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
                    var errors: [String: UInt64] = [:]
                    while clock.now < end {
                        let t0 = clock.now
                        do {
                            try await operation(client)
                            let us = (clock.now - t0).components
                            _ = h.record(UInt64(us.seconds) * 1_000_000 + UInt64(us.attoseconds / 1_000_000_000_000))
                        } catch {
                            errors[errorCode(error), default: 0] += 1
                        }
                    }
                    return Partial(histogram: h, errors: errors)
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
            for await partial in group {
                total.add(partial.histogram)
                errors.merge(partial.errors, uniquingKeysWith: +)
            }
            return Partial(histogram: total, errors: errors)
        }
        let seconds = Double((clock.now - start).components.seconds) + Double((clock.now - start).components.attoseconds) / 1e18
        let h = merged.histogram
        return LatencySummary(operations: h.totalCount, errors: merged.errors.values.reduce(0, +), seconds: seconds,
                              throughput: Double(h.totalCount) / seconds,
                              p50: h.valueAtPercentile(50), p95: h.valueAtPercentile(95), p99: h.valueAtPercentile(99), max: h.max,
                              errorsByCode: merged.errors)
    }
}
