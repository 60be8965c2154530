import API
import ClusterMetadata
import Etcd
import Foundation
import Ledger
import Logging
import Testing

@Suite("OpenAPI document")
struct OpenAPITests {
    @Test("every route the server registers is in docs/openapi.yaml, and the other way round")
    func parity() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let yaml = try String(contentsOfFile: root.path + "/docs/openapi.yaml", encoding: .utf8)
        var documented: Set<String> = []
        var path: String?
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("  /"), line.hasSuffix(":") { path = String(line.dropFirst(2).dropLast()) }
            else if !line.hasPrefix("  ") { path = nil }
            if let path, let m = ["get", "post", "put", "delete", "patch"].first(where: { line == "    \($0):" }) {
                documented.insert("\(m.uppercased()) \(path)")
            }
        }
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let registered = try await withOfflineRouter(logger: logger) { router in
            Set(router.routes.map { route in
                // Hummingbird prints parameters as ":id" or "{id}" depending on version: normalise to OpenAPI's form.
                let p = route.path.description.split(separator: "/").map { $0.hasPrefix(":") ? "{\($0.dropFirst())}" : String($0) }.joined(separator: "/")
                return "\(route.method) /\(p.hasPrefix("/") ? String(p.dropFirst()) : p)"
            })
        }
        #expect(documented.count >= 10)
        // The admin routes exist only with http.admin_routes.
        let plain = try await withOfflineRouter(logger: logger, adminRoutes: false) { router in Set(router.routes.map { "\($0.path)" }) }
        #expect(!plain.contains { $0.contains("jobs") || $0.contains("ranges") }, "admin routes served without http.admin_routes: \(plain.sorted())")
        #expect(registered == documented, "only in the server: \(registered.subtracting(documented).sorted()); only in the document: \(documented.subtracting(registered).sorted())")
    }
}
