#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The thread that owns one connection: Connector/C's blocking calls run here, never on Swift's
/// cooperative pool.
///
/// It is also a `TaskExecutor`. A caller that runs a whole unit of work with this executor
/// preferred (`withTaskExecutorPreference(connection.executor)`) executes on this thread, so each
/// driver call runs inline, with no thread hop at all — as a blocking C client would. Callers that do
/// not opt in pay one hop here and one back per call.
///
/// `@unchecked Sendable`: all mutable state (`queue`, `stopping`) is guarded by `mutex`; `thread`
/// is written once before any job can run and only compared afterwards.
final class ConnectionThread: TaskExecutor, @unchecked Sendable {
    private enum Work {
        case job(UnownedJob)
        case closure(() -> Void)
    }

    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var queue: [Work] = []
    private var head = 0
    private var stopping = false
    private var thread = pthread_t()

    init(name: String) {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
        let box = Unmanaged.passRetained(self)
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setstacksize(&attributes, 2 << 20) // async code may run here too (executor preference)
        let rc = pthread_create(&thread, &attributes, { raw in
            let me = Unmanaged<ConnectionThread>.fromOpaque(raw!).takeRetainedValue()
            me.loop()
            return nil
        }, box.toOpaque())
        pthread_attr_destroy(&attributes)
        precondition(rc == 0, "cannot start a connection thread: \(rc)")
        pthread_detach(thread)
        _ = name
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    /// Whether the caller runs on this thread.
    var isCurrent: Bool { pthread_equal(pthread_self(), thread) != 0 }

    func enqueue(_ job: consuming ExecutorJob) {
        push(.job(UnownedJob(job)))
    }

    /// Runs `body` on this thread.
    func submit(_ body: @escaping () -> Void) {
        push(.closure(body))
    }

    /// Ends the thread after the work already queued.
    func stop() {
        pthread_mutex_lock(&mutex)
        stopping = true
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
    }

    private func push(_ work: Work) {
        pthread_mutex_lock(&mutex)
        queue.append(work)
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
    }

    private func loop() {
        while true {
            pthread_mutex_lock(&mutex)
            while head == queue.count && !stopping { pthread_cond_wait(&condition, &mutex) }
            if head == queue.count && stopping {
                pthread_mutex_unlock(&mutex)
                return
            }
            let work = queue[head]
            head += 1
            if head == queue.count {
                queue.removeAll(keepingCapacity: true)
                head = 0
            }
            pthread_mutex_unlock(&mutex)
            switch work {
            case .job(let job): job.runSynchronously(on: asUnownedTaskExecutor())
            case .closure(let body): body()
            }
        }
    }
}
