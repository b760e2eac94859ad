#include <netlink/netlink.h>
#include <netlink/socket.h>
#include <netlink/errno.h>
