#include <sqlite3.h>

// sqlite3_db_config is variadic, which Swift cannot call: a fixed-argument wrapper.
// Leaves the WAL un-checkpointed when a connection closes: short-lived processes then pay no
// checkpoint (and its fsyncs) on exit; the WAL is checkpointed when it grows (auto-checkpoint).
static inline int netctl_sqlite_no_checkpoint_on_close(sqlite3 *db) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)0);
}
