#ifndef SHARDBANK_CMARIADB_SHIM_H
#define SHARDBANK_CMARIADB_SHIM_H
/* mysql.h uses size_t without including <stddef.h> itself. */
#include <stddef.h>
#include <mysql.h>
#include <errmsg.h>

/* mysql_library_init/end are macros, invisible to Swift. */
static inline int shardbank_mysql_library_init(void) {
    return mysql_library_init(0, NULL, NULL);
}
static inline void shardbank_mysql_library_end(void) {
    mysql_library_end();
}

/* Names the calling thread (Linux keeps 15 bytes); prctl is variadic, invisible to Swift. */
#if defined(__linux__)
#include <sys/prctl.h>
static inline void shardbank_set_thread_name(const char *name) {
    (void)prctl(PR_SET_NAME, name, 0, 0, 0);
}
#else
static inline void shardbank_set_thread_name(const char *name) { (void)name; }
#endif
#endif
