/// The `wasi_snapshot_preview1` functions a machine offers, with their signatures. A guest
/// importing anything else is refused at preparation, naming the import.
enum WASIImportTable {
    static let moduleName = "wasi_snapshot_preview1"

    static let signatures: [String: (parameters: [GuestValueType], results: [GuestValueType])] = [
        "args_get": ([.i32, .i32], [.i32]),
        "args_sizes_get": ([.i32, .i32], [.i32]),
        "environ_get": ([.i32, .i32], [.i32]),
        "environ_sizes_get": ([.i32, .i32], [.i32]),
        "clock_res_get": ([.i32, .i32], [.i32]),
        "clock_time_get": ([.i32, .i64, .i32], [.i32]),
        "fd_close": ([.i32], [.i32]),
        "fd_fdstat_get": ([.i32, .i32], [.i32]),
        "fd_fdstat_set_flags": ([.i32, .i32], [.i32]),
        "fd_prestat_get": ([.i32, .i32], [.i32]),
        "fd_prestat_dir_name": ([.i32, .i32, .i32], [.i32]),
        "fd_read": ([.i32, .i32, .i32, .i32], [.i32]),
        "fd_write": ([.i32, .i32, .i32, .i32], [.i32]),
        "fd_seek": ([.i32, .i64, .i32, .i32], [.i32]),
        "poll_oneoff": ([.i32, .i32, .i32, .i32], [.i32]),
        "proc_exit": ([.i32], []),
        "random_get": ([.i32, .i32], [.i32]),
        "sched_yield": ([], [.i32]),
        "sock_accept": ([.i32, .i32, .i32], [.i32]),
        "sock_recv": ([.i32, .i32, .i32, .i32, .i32, .i32], [.i32]),
        "sock_send": ([.i32, .i32, .i32, .i32, .i32], [.i32]),
        "sock_shutdown": ([.i32, .i32], [.i32]),
    ]

    static var offered: Set<String> { Set(signatures.keys) }

    /// Host calls at which the guest can be suspended (Asyncify unwinds through their callers).
    /// Everything but start-up queries and proc_exit: a checkpoint that is due is taken at the
    /// next of these, and each one is also where a guest may block.
    static let suspendable: Set<String> = [
        "clock_time_get", "fd_close", "fd_read", "fd_write", "poll_oneoff", "random_get",
        "sched_yield", "sock_accept", "sock_recv", "sock_send", "sock_shutdown",
    ]
}
