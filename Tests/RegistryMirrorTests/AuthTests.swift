import Foundation
import RegistryAPI
import Testing

@Suite struct HtpasswdTests {
    /// `hunter2`, bcrypt cost 5, as `htpasswd -B -C 5` writes it.
    static let entry = "alice:$2b$05$wwADLSfXpTgRcUBJ176FlOYGHx7yrOtd2LZ5hOcY.NShe2uaZotsG"

    @Test func bcryptEntriesVerify() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.path + "/htpasswd"
        try "# users\n\(Self.entry)\n".write(toFile: path, atomically: true, encoding: .utf8)
        let file = try Htpasswd(path: path)
        #expect(file.verify(user: "alice", password: "hunter2"))
        #expect(file.verify(user: "alice", password: "hunter2"), "the remembered answer agrees")
        #expect(!file.verify(user: "alice", password: "hunter3"))
        #expect(!file.verify(user: "bob", password: "hunter2"))
        #expect(!file.verify(user: "alice", password: ""))
    }

    @Test func changesToTheFileAreSeen() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.path + "/htpasswd"
        try "\(Self.entry)\n".write(toFile: path, atomically: true, encoding: .utf8)
        let file = try Htpasswd(path: path)
        #expect(file.verify(user: "alice", password: "hunter2"))
        // alice removed; the change is picked up within the 2 s check interval.
        try "carol:\(Self.entry.split(separator: ":", maxSplits: 1)[1])\n".write(toFile: path, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(5)], ofItemAtPath: path)
        Thread.sleep(forTimeInterval: 2.2)
        #expect(!file.verify(user: "alice", password: "hunter2"), "a removed user is still let in")
        #expect(file.verify(user: "carol", password: "hunter2"))
    }

    @Test(arguments: ["alice:hunter2", "alice:$apr1$abc$def", "no-colon-here"])
    func unsupportedEntriesAreRefusedAtLoad(_ line: String) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.path + "/htpasswd"
        try "\(line)\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: MirrorSetupFailure.self) { _ = try Htpasswd(path: path) }
    }
}
