#define _GNU_SOURCE
#include "ccurl.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static struct {
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    void (*easy_cleanup)(CURL *);
    void (*easy_reset)(CURL *);
    CURLcode (*easy_perform)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
} api;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char failure[256];
static int loaded = -1;

static void load(void) {
    void *h = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!h) { snprintf(failure, sizeof failure, "%s", dlerror()); return; }
#define LOAD(field, name) if (!(*(void **)&api.field = dlsym(h, name))) { snprintf(failure, sizeof failure, "libcurl.so.4 has no %s", name); return; }
    LOAD(global_init, "curl_global_init")
    LOAD(easy_init, "curl_easy_init")
    LOAD(easy_cleanup, "curl_easy_cleanup")
    LOAD(easy_reset, "curl_easy_reset")
    LOAD(easy_perform, "curl_easy_perform")
    LOAD(easy_strerror, "curl_easy_strerror")
    LOAD(easy_setopt, "curl_easy_setopt")
    LOAD(slist_append, "curl_slist_append")
    LOAD(slist_free_all, "curl_slist_free_all")
#undef LOAD
    // Not thread-safe in libcurl: done here, once, before any handle exists.
    if (api.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) { snprintf(failure, sizeof failure, "curl_global_init failed"); return; }
    loaded = 0;
}

int netctl_curl_load(char *message, unsigned long size) {
    pthread_once(&once, load);
    if (loaded != 0 && message && size) snprintf(message, size, "%s", failure);
    return loaded;
}

CURL *netctl_curl_easy_init(void) { return api.easy_init(); }
void netctl_curl_easy_cleanup(CURL *h) { api.easy_cleanup(h); }
void netctl_curl_easy_reset(CURL *h) { api.easy_reset(h); }
CURLcode netctl_curl_easy_perform(CURL *h) { return api.easy_perform(h); }
const char *netctl_curl_easy_strerror(CURLcode code) { return api.easy_strerror(code); }
struct curl_slist *netctl_curl_slist_append(struct curl_slist *list, const char *text) { return api.slist_append(list, text); }
void netctl_curl_slist_free_all(struct curl_slist *list) { api.slist_free_all(list); }
CURLcode netctl_curl_set_long(CURL *h, CURLoption o, long v) { return api.easy_setopt(h, o, v); }
CURLcode netctl_curl_set_ptr(CURL *h, CURLoption o, const void *v) { return api.easy_setopt(h, o, v); }
CURLcode netctl_curl_set_blob(CURL *h, CURLoption o, struct curl_blob *v) { return api.easy_setopt(h, o, v); }
CURLcode netctl_curl_set_data_fn(CURL *h, CURLoption o, netctl_curl_data_fn f) { return api.easy_setopt(h, o, f); }
