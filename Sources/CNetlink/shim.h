// libnl-3 and libnl-route-3, with the kernel's rtnetlink headers (IFLA_*, IFA_*, RTA_*).
// Order matters: these before any <linux/...> header, or in_addr is defined twice.
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/if_addr.h>
#include <linux/veth.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>
#include <netlink/errno.h>
#include <netlink/msg.h>
#include <netlink/route/link.h>
#include <netlink/route/addr.h>
#include <netlink/route/route.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/link/bridge.h>
