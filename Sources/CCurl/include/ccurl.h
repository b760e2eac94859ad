#ifndef NETCTL_CCURL_H
#define NETCTL_CCURL_H
#include <curl/curl.h>

// libcurl, loaded on first use (dlopen) rather than linked: every netctl command would
// otherwise pay for loading it and its dependencies at start-up, and only pulls and logins
// use it. RTLD_DEEPBIND keeps it on its own OpenSSL, whatever the executable links in.
// Returns 0 when libcurl is there; else -1, with the loader's message in `message`.
int netctl_curl_load(char *message, unsigned long size);

CURL *netctl_curl_easy_init(void);
void netctl_curl_easy_cleanup(CURL *h);
void netctl_curl_easy_reset(CURL *h);
CURLcode netctl_curl_easy_perform(CURL *h);
const char *netctl_curl_easy_strerror(CURLcode code);
struct curl_slist *netctl_curl_slist_append(struct curl_slist *list, const char *text);
void netctl_curl_slist_free_all(struct curl_slist *list);

// curl_easy_setopt is variadic, which Swift cannot call: one typed wrapper per argument kind.
CURLcode netctl_curl_set_long(CURL *h, CURLoption o, long v);
CURLcode netctl_curl_set_ptr(CURL *h, CURLoption o, const void *v);
CURLcode netctl_curl_set_blob(CURL *h, CURLoption o, struct curl_blob *v);
typedef size_t (*netctl_curl_data_fn)(char *, size_t, size_t, void *);
CURLcode netctl_curl_set_data_fn(CURL *h, CURLoption o, netctl_curl_data_fn f);
#endif
