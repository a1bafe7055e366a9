/**
 * The shell scripts baked into the guest's initramfs.
 *
 * /init (PID 1) mounts the pseudo file systems, loads the virtio modules with
 * insmod, brings eth0 up, then sources /case.sh (the test's script, in a
 * second archive) with these helpers defined:
 *
 *   dhcp                 udhcpc on eth0 (lease applied by /etc/udhcpc.sh);
 *                        prints "MOAT-VM-LEASE ip=.. mask=.. router=.. dns=.. mtu=.."
 *   mark NAME            prints "MOAT-VM-MARK NAME <guest uptime s>"
 *   check DESC CMD...    runs CMD; on a non-zero exit fails naming DESC
 *   expect_eq DESC GOT WANT
 *   fail WHY             prints "MOAT-VM-RESULT fail WHY" and powers off
 *
 * and, when the case returns, prints "MOAT-VM-RESULT ok" and powers off
 * (poweroff -f: QEMU exits). The host reads all of it from the serial console.
 *
 * Case scripts bound wget with `timeout N wget ...`, never `wget -T N`:
 * Debian's busybox-static 1.35 wget dies with SIGSEGV when given -T.
 */

export const GUEST_INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

now() { cut -d' ' -f1 /proc/uptime; }
mark() { echo "MOAT-VM-MARK $1 $(now)"; }
finish() {
  echo "MOAT-VM-RESULT $*"
  sync
  poweroff -f
  while :; do sleep 1; done
}
fail() { finish "fail $*"; }
check() {
  desc=$1; shift
  out=$("$@" 2>&1) || fail "$desc: $(echo "$out" | tail -n 3 | tr '\\n' ' ')"
  echo "MOAT-VM-STEP $desc"
}
expect_eq() {
  [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
  echo "MOAT-VM-STEP $1 = $2"
}
dhcp() {
  rm -f /tmp/lease
  udhcpc -i eth0 -n -q -f -t 30 -T 1 -O mtu -s /etc/udhcpc.sh >/tmp/udhcpc.log 2>&1 \\
    || fail "udhcpc: $(tail -n 3 /tmp/udhcpc.log | tr '\\n' ' ')"
  [ -s /tmp/lease ] || fail "udhcpc: no lease recorded"
  . /tmp/lease
  echo "MOAT-VM-LEASE ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu"
  mark dhcp
}
# The A answers of busybox nslookup (the "Address" lines after "Name:"; those before it name the server).
resolve() { nslookup -type=a "$1" "$2" 2>/dev/null | awk '/^Name:/ { n = 1 } n && /^Address/ { print $NF }' | tr '\n' ' ' | sed 's/ $//'; }

mark init
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m || fail "insmod $m"; done
n=0
while [ ! -e /sys/class/net/eth0 ]; do
  n=$((n + 1)); [ $n -gt 200 ] && fail "no eth0 after insmod"
  usleep 50000
done
ip link set lo up
ip link set eth0 up
mark link
. /case.sh
finish ok
`;

/** busybox udhcpc event script: applies the lease and records it in /tmp/lease (shell syntax). */
export const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    if [ -n "$mtu" ]; then ip link set dev "$interface" mtu "$mtu" || exit 1; fi
    ip addr add "$ip/\${mask:-24}" dev "$interface" || exit 1
    for r in $router; do ip route replace default via "$r" dev "$interface" || exit 1; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    {
      echo "ip='$ip'"; echo "mask='$mask'"; echo "router='$router'"; echo "dns='$dns'"
      echo "mtu='$mtu'"; echo "serverid='$serverid'"; echo "lease='$lease'"
    } > /tmp/lease
    ;;
esac
exit 0
`;
