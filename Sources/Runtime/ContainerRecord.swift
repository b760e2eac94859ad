import FoundationEssentials
import Glibc
import Primitives
import Images

/// What netctl keeps about a container, in `<state>/containers/<id>/container.json`.
/// Written before anything is made for the container (so `gc` finds leftovers of a crash)
/// and replaced atomically (rename) on every change.
public struct ContainerRecord: Codable, Equatable, Sendable {
    public enum State: String, Codable, Sendable {
        /// Being set up by `run`; its owner process is `monitorPID`'s parent.
        case created
        case running
        case exited
    }

    public var id: String
    public var name: String
    public var image: String
    public var imageID: String
    /// The process's argv: entrypoint + command.
    public var command: [String]
    public var created: Timestamp
    /// The networks it is on, in the order it joined them.
    public var networks: [String]
    public var ports: [String]
    public var autoRemove: Bool
    public var detached: Bool
    /// The image's StopSignal, as runc names it ("TERM", "QUIT", "9"); nil: TERM.
    public var stopSignal: String?
    public var state: State
    /// The process that owns the container's lifetime (the monitor), with its start time
    /// (from /proc) so a reused PID is not mistaken for it.
    public var monitorPID: Int32?
    public var monitorStart: UInt64?
    /// The container's first process, as this host sees it.
    public var pid: Int32?
    public var pidStart: UInt64?
    public var startedAt: Timestamp?
    public var finishedAt: Timestamp?
    public var exitCode: Int32?
    public var rootfsMode: String?
    /// Diff IDs (hex) of the layers its root filesystem is built on: `rmi` keeps them.
    public var layers: [String]?

    public var shortID: String { String(id.prefix(12)) }
    /// The monitor and the container's first process, as identities (nil until recorded).
    var monitor: ProcessIdentity? { monitorPID.flatMap { pid in monitorStart.map { ProcessIdentity(pid: pid, startTime: $0) } } }
    var process: ProcessIdentity? { pid.flatMap { pid in pidStart.map { ProcessIdentity(pid: pid, startTime: $0) } } }
    /// The endpoint on its first network is named like the container; on each other
    /// network, NAME.NETWORK (endpoint names are unique across networks).
    public func endpointName(on network: String, first: Bool) -> String { first ? name : name + "." + network }
    /// The network namespace file netctl makes for it.
    public var namespaceName: String { "ctr-" + shortID }
}

/// The container directories and their records.
final class ContainerStore {
    let directory: String

    init(directory: String) throws {
        self.directory = directory
        if mkdir(directory, 0o700) != 0 && errno != EEXIST { throw RuntimeError.io(what: "cannot create \(directory)", errno: errno) }
    }

    func path(_ id: String) -> String { directory + "/" + id }

    func save(_ record: ContainerRecord) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFile(path(record.id) + "/container.json", Array(try encoder.encode(record)), mode: 0o600, atomically: true, synced: true)
    }

    func load(_ id: String) -> ContainerRecord? {
        guard let bytes = readBytes(path(id) + "/container.json") else { return nil }
        return try? JSONDecoder().decode(ContainerRecord.self, from: Data(bytes))
    }

    /// Every container, oldest first.
    func all() -> [ContainerRecord] {
        let fd = open(directory, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        let names = ((try? listDirectory(fd)) ?? []).filter { !$0.hasPrefix(".") }
        return names.compactMap(load).sorted { $0.created < $1.created }
    }

    /// Runs `body` holding the store's lock (names are checked and records changed under it).
    func locked<T>(_ body: () throws -> T) throws -> T {
        let fd = open(directory + "/.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw RuntimeError.io(what: "cannot open \(directory)/.lock", errno: errno) }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw RuntimeError.io(what: "cannot lock \(directory)", errno: errno) }
        }
        return try body()
    }

    /// Changes a record under the lock; nil if it is gone.
    @discardableResult
    func update(_ id: String, _ change: (inout ContainerRecord) -> Void) throws -> ContainerRecord? {
        try locked {
            guard var record = load(id) else { return nil }
            change(&record)
            try save(record)
            return record
        }
    }

    /// A container by name, full ID or unique ID prefix.
    func find(_ reference: String) throws -> ContainerRecord {
        let records = all()
        if let exact = records.first(where: { $0.name == reference || $0.id == reference }) { return exact }
        let matches = records.filter { $0.id.hasPrefix(reference) }
        if matches.count == 1 { return matches[0] }
        if matches.count > 1 { throw RuntimeError.ambiguousName(reference, matches: matches.map(\.name)) }
        throw RuntimeError.containerNotFound(reference)
    }
}
