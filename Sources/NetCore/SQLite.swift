import CSQLite
import Glibc

/// A minimal SQLite connection: prepared statements with positional bindings.
final class SQLiteDatabase {
    private var handle: OpaquePointer?
    let path: String

    init(path: String) throws {
        self.path = path
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX
        guard sqlite3_open_v2(path, &handle, flags, nil) == SQLITE_OK else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(handle)
            handle = nil  // the throw runs deinit, which closes it otherwise
            throw NetctlError.stateUnavailable(path: path, reason: message)
        }
        // Wait for other netctl processes instead of failing with SQLITE_BUSY.
        sqlite3_busy_timeout(handle, 15_000)
        // Keep the WAL file between processes: each short-lived netctl would otherwise
        // create it, and delete it with an fsync on exit.
        var persist: Int32 = 1
        sqlite3_file_control(handle, "main", SQLITE_FCNTL_PERSIST_WAL, &persist)
        // And don't checkpoint on close: as the last connection, every short-lived process
        // (each CLI command, each CNI plugin call) would copy the WAL into the database with
        // three fsyncs on its way out. Commits stay as durable as before (WAL, synchronous
        // NORMAL); the WAL is checkpointed by a writer once it passes 64 pages (StateStore).
        _ = netctl_sqlite_no_checkpoint_on_close(handle)
    }

    deinit { sqlite3_close(handle) }

    /// Whether the last call failed because another connection held a lock. A few such
    /// failures skip the busy handler (SQLite returns them at once to avoid deadlocks, and
    /// when a new database changes its journal mode), so callers that can retry do.
    var lastErrorWasBusy: Bool { sqlite3_errcode(handle) & 0xff == SQLITE_BUSY }

    func execute(_ sql: String) throws {
        var error: UnsafeMutablePointer<CChar>?
        if sqlite3_exec(handle, sql, nil, nil, &error) != SQLITE_OK {
            let message = error.map { String(cString: $0) } ?? "unknown error"
            sqlite3_free(error)
            throw damaged(message) ?? NetctlError.state("state database: \(message)")
        }
    }

    /// Runs a statement that returns no rows.
    func run(_ sql: String, _ values: [SQLiteValue] = []) throws {
        _ = try query(sql, values)
    }

    /// Runs a statement and returns its rows.
    func query(_ sql: String, _ values: [SQLiteValue] = []) throws -> [[SQLiteValue]] {
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(handle, sql, -1, &statement, nil) == SQLITE_OK else {
            throw failure(sql)
        }
        defer { sqlite3_finalize(statement) }
        for (i, value) in values.enumerated() {
            let slot = Int32(i + 1)
            switch value {
            case .null: sqlite3_bind_null(statement, slot)
            case .integer(let v): sqlite3_bind_int64(statement, slot, v)
            case .text(let v): sqlite3_bind_text(statement, slot, v, -1, sqliteTransient)
            }
        }
        var rows: [[SQLiteValue]] = []
        while true {
            switch sqlite3_step(statement) {
            case SQLITE_ROW:
                rows.append((0..<sqlite3_column_count(statement)).map { column in
                    switch sqlite3_column_type(statement, column) {
                    case SQLITE_NULL: return .null
                    case SQLITE_INTEGER: return .integer(sqlite3_column_int64(statement, column))
                    default: return .text(String(cString: sqlite3_column_text(statement, column)))
                    }
                })
            case SQLITE_DONE:
                return rows
            case SQLITE_CONSTRAINT:
                throw SQLiteConstraintViolation(message: String(cString: sqlite3_errmsg(handle)))
            default:
                throw failure(sql)
            }
        }
    }

    /// Runs `body` in a write transaction taken up front (BEGIN IMMEDIATE), so concurrent
    /// netctl processes serialise on the database lock rather than fail half-way.
    func transaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try execute("COMMIT")
            return result
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    /// Runs `body` in a read transaction: its queries see one snapshot of the database.
    func readTransaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN DEFERRED")
        defer { try? execute("COMMIT") }
        return try body()
    }

    private func failure(_ sql: String) -> NetctlError {
        let message = String(cString: sqlite3_errmsg(handle))
        return damaged(message) ?? .state("state database (\(path)): \(message)")
    }

    /// A file SQLite cannot read as a database is not a passing failure: nothing may be
    /// reconciled by it, and the advice differs.
    private func damaged(_ message: String) -> NetctlError? {
        switch sqlite3_errcode(handle) & 0xff {
        case SQLITE_CORRUPT, SQLITE_NOTADB: return .stateSuspect(path: path, problem: .damaged(message))
        default: return nil
        }
    }
}

enum SQLiteValue: Equatable {
    case null
    case integer(Int64)
    case text(String)

    var string: String? { if case .text(let v) = self { return v } else { return nil } }
    var int: Int64? { if case .integer(let v) = self { return v } else { return nil } }

    static func bool(_ value: Bool) -> SQLiteValue { .integer(value ? 1 : 0) }
}

extension Optional where Wrapped == String {
    var sqlite: SQLiteValue { map { .text($0) } ?? .null }
}

struct SQLiteConstraintViolation: Error {
    let message: String
}

// SQLITE_TRANSIENT: SQLite copies the bound text before the call returns.
private let sqliteTransient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
