#!/usr/bin/env bash
# Layout experiment (issue 12, evidence kept in the repo): how weft's Linux bridge joins the OVS
# kernel datapath. Two "hosts" (netns) joined by a veth underlay (10.9.0.1/2), each with a bridge
# `weft`, a "pod" (its own netns, 10.40.0.x/24, veth on the bridge) and an OVS datapath with a
# VXLAN vport; flows put in with ovs-dpctl carry pod traffic over VXLAN (VNI 42).
#
# Variants (each set up, pinged, shown and torn down on its own):
#   internal        the datapath's internal vport is itself a port of the bridge; bridge defaults
#   internal-quiet  same, the internal port with learning/flooding off and isolated on; the
#                   remote pod's MAC as a static FDB entry and a static neighbour in the pod
#   veth            Weave's way: a veth pair, one end on the bridge, the other an OVS netdev vport
#   local-port      the datapath's own local port (port 0, named after the datapath) on the bridge,
#                   no extra internal vport
#   split-netns     the datapath (and its VXLAN vport) in one netns, its internal vport moved
#                   into another netns that holds the bridge and the pod
#
# Run it in the kernel VM (the host kernel has no openvswitch):
#   /work/shared/kernel-vm/run-in-kernel-vm --timeout 300 -- bash tests/kernel-vm/layout-experiment.sh [VARIANT...]
#
# Results (2026-12-04, kernel 6.1.0-57-amd64 under TCG, ovs-dpctl 3.1.0; 93 s for all five):
#   internal        ping WORKS: `ip link set <internal vport> master weft` is accepted, frames the
#                   bridge forwards to it enter the datapath, `output(internal)` hands them to the
#                   bridge. The bridge learns the remote pod's MAC on the internal port. 3 unknown-
#                   unicast + 3 broadcast pings: datapath misses 11 -> 18 (flooded into OVS).
#                   DF ping: 1500-byte IP packets get "Frag needed (mtu = 1450)", made by the
#                   kernel as if from the remote pod; 1450-byte ones pass.
#   internal-quiet  ping WORKS with learning/flood/mcast_flood/bcast_flood off and isolated on,
#                   a static FDB entry and a permanent neighbour; the same probe: misses 8 -> 9.
#   veth            ping WORKS (netdev vport on the veth end).
#   local-port      ping WORKS with the datapath's own port 0 as the bridge port.
#   split-netns     ping WORKS with the internal vport moved (`ip link set ... netns`) to the
#                   bridge's netns; the datapath, its VXLAN vport and the underlay stay behind,
#                   and ovs-dpctl in the datapath's netns still lists the port.
set -uo pipefail

S=$$ # netns names carry the pid
VNI=0x2a
PORT=4789
VX=vxlan_sys_$PORT
results=()
FLOWS_OK=1

h() { ip netns exec "$1-$S" "${@:2}"; } # h NS CMD...: run CMD in the netns NS
say() { echo "  \$ $*"; }
run() { say "$@"; "$@" 2>&1 | sed 's/^/    /'; return "${PIPESTATUS[0]}"; }

pod_mac() { printf '02:00:0a:28:00:%02x' "$1"; }

# port number of vport NAME in the datapath of netns NS
port_no() { h "$1" ovs-dpctl show | awk -v n="$2" '$1 == "port" && $3 == n { sub(":", "", $2); print $2 }'; }

underlay() {
    ip netns add "h1-$S"
    ip netns add "h2-$S"
    ip link add u1 netns "h1-$S" type veth peer name u2 netns "h2-$S"
    for i in 1 2; do
        h "h$i" ip link set lo up
        h "h$i" ip addr add "10.9.0.$i/24" dev "u$i"
        h "h$i" ip link set "u$i" up
    done
}

# host I [BRIDGE_NS]: the bridge `weft` and the pod pI (in BRIDGE_NS, default hI)
bridge_and_pod() {
    local i=$1 bns=${2:-h$1}
    ip netns add "p$i-$S"
    h "$bns" ip link add weft type bridge
    h "$bns" ip link set weft up
    h "$bns" ip link add "vp$i" type veth peer name eth0 netns "p$i-$S"
    h "$bns" ip link set "vp$i" master weft up
    h "p$i" ip link set lo up
    h "p$i" ip link set eth0 address "$(pod_mac "$i")"
    h "p$i" ip addr add "10.40.0.$i/24" dev eth0
    h "p$i" ip link set eth0 up
}

# flows I BRIDGE_PORT: host I's datapath sends what its bridge port gets for the other pod through
# VXLAN to the other host, and what VXLAN brings from there back to the bridge port.
# The kernel answered EINVAL (ovs-dpctl says only "Invalid argument") to a first try that lacked
# all of the following at once, and accepted the flows with them; which rule is which comes from
# reading net/openvswitch/flow_netlink.c, not from trying them one by one:
# - an output action is the bare port number (ODP syntax; ovs-dpctl rejects output(N) itself);
# - a key with eth_type(0x0800) must carry ipv4(...), one with 0x0806 arp(...) (may be wildcarded);
# - a key without eth() is an L3 (ptap) packet: tunnel flows need eth() to see Ethernet frames;
# - a tunnel key needs its dst (this host's underlay address) and ttl, even if wildcarded;
# - set(tunnel(...)) needs dst and ttl.
l3() { [[ $1 == 0x0800 ]] && echo "ipv4(frag=no)" || echo "arp(sip=0.0.0.0/0.0.0.0)"; }
ANY_ETH="eth(src=00:00:00:00:00:00/00:00:00:00:00:00,dst=00:00:00:00:00:00/00:00:00:00:00:00)"
flows() {
    local i=$1 bridge_port=$2 j=$((3 - $1)) vx et dst
    vx=$(port_no "h$i" "$VX")
    for et in 0x0800 0x0806; do
        for dst in "$(pod_mac "$j")" ff:ff:ff:ff:ff:ff; do
            [[ $et == 0x0800 && $dst == ff:* ]] && continue
            run h "h$i" ovs-dpctl add-flow "dp$i" \
                "in_port($bridge_port),eth(src=00:00:00:00:00:00/00:00:00:00:00:00,dst=$dst),eth_type($et),$(l3 $et)" \
                "set(tunnel(tun_id=$VNI,dst=10.9.0.$j,ttl=64,tp_dst=$PORT,flags(df|key))),$vx" || FLOWS_OK=0
        done
        run h "h$i" ovs-dpctl add-flow "dp$i" \
            "in_port($vx),tunnel(tun_id=$VNI,src=10.9.0.$j,dst=10.9.0.$i,ttl=64/0,flags(+key)),$ANY_ETH,eth_type($et),$(l3 $et)" \
            "$bridge_port" || FLOWS_OK=0
    done
}

datapath() { # datapath I NS: the datapath dpI with its VXLAN vport in netns NS
    run h "$2" ovs-dpctl add-dp "dp$1" || return 1
    run h "$2" ovs-dpctl add-if "dp$1" "vx$1,type=vxlan,remote_ip=flow,key=flow,dst_port=$PORT" || return 1
}

ping_pods() { # ping_pods NAME: pod 1 pings pod 2; records the result
    local rc=0
    run h p1 ping -c 3 -i 0.3 -W 2 10.40.0.2 || rc=$?
    results+=("$1: ping pod1 -> pod2 $([[ $rc == 0 ]] && echo WORKS || echo FAILS) ($( ((FLOWS_OK)) && echo "every flow accepted" || echo "some flows REJECTED"))")
    FLOWS_OK=1
    return "$rc"
}

# probe_flooding NAME: pod 1 sends to a MAC nobody has (static neighbour 10.40.0.99) and
# broadcasts; counts the frames that reached h1's datapath and matched no flow (misses)
probe_flooding() {
    local before after
    before=$(h h1 ovs-dpctl show dp1 | awk '/lookups:/ { sub("missed:", "", $3); print $3 }')
    h p1 ip neigh replace 10.40.0.99 lladdr 02:00:0a:28:00:63 dev eth0 nud permanent
    h p1 ping -c 3 -i 0.3 -W 1 10.40.0.99 >/dev/null 2>&1
    h p1 ping -b -c 3 -i 0.3 -W 1 10.40.0.255 >/dev/null 2>&1
    after=$(h h1 ovs-dpctl show dp1 | awk '/lookups:/ { sub("missed:", "", $3); print $3 }')
    echo "  -- h1 datapath misses: $before before, $after after 3 unknown-unicast + 3 broadcast pings"
    results+=("$1: 3 unknown-unicast + 3 broadcast frames from the pod: h1 datapath misses $before -> $after")
}

# probe_mtu NAME: a 1500-byte and a 1450-byte IP packet with DF from pod 1 (VXLAN adds 50 bytes;
# the underlay MTU is 1500)
probe_mtu() {
    local size rc
    for size in 1472 1422; do
        rc=0
        run h p1 ping -M "do" -c 2 -i 0.3 -W 2 -s "$size" 10.40.0.2 || rc=$?
        results+=("$1: ping with DF, $((size + 28))-byte IP packets: $([[ $rc == 0 ]] && echo WORKS || echo FAILS)")
    done
    run h h1 ip -s link show u1
}

show() { # show NS...: what the datapaths and bridges did
    local ns
    for ns in "$@"; do
        echo "  -- in $ns:"
        run h "$ns" ovs-dpctl show 2>/dev/null
        run h "$ns" ovs-dpctl dump-flows 2>/dev/null
    done
}

show_bridge() { # show_bridge NS
    run h "$1" bridge link show
    run h "$1" bridge fdb show br weft
}

teardown() {
    local ns
    for ns in h1 h2 b1 b2; do
        h "$ns" ovs-dpctl del-dp "dp${ns#?}" >/dev/null 2>&1
    done
    for ns in h1 h2 p1 p2 b1 b2; do ip netns del "$ns-$S" 2>/dev/null; done
    return 0
}
trap teardown EXIT

variant_internal() { # the internal vport on the bridge, bridge defaults
    local i ok=1
    underlay
    for i in 1 2; do
        bridge_and_pod "$i"
        datapath "$i" "h$i" || ok=0
        run h "h$i" ovs-dpctl add-if "dp$i" ovsbr,type=internal || ok=0
        run h "h$i" ip link set ovsbr master weft up || ok=0
        flows "$i" "$(port_no "h$i" ovsbr)"
    done
    ((ok)) || { results+=("internal: setup FAILED"); return 1; }
    h h2 timeout 8 tcpdump -nn -c 4 -i u2 udp port $PORT >"/tmp/tcpdump-$S" 2>&1 &
    local td=$!
    sleep 1
    ping_pods internal
    wait "$td"
    echo "  -- tcpdump on h2's underlay:"
    sed 's/^/    /' "/tmp/tcpdump-$S"
    probe_flooding internal
    probe_mtu internal
    show h1 h2
    show_bridge h1
}

variant_internal_quiet() { # the internal vport, learning and flooding off, static FDB + neighbours
    local i j ok=1
    underlay
    for i in 1 2; do
        j=$((3 - i))
        bridge_and_pod "$i"
        datapath "$i" "h$i" || ok=0
        run h "h$i" ovs-dpctl add-if "dp$i" ovsbr,type=internal || ok=0
        run h "h$i" ip link set ovsbr master weft up || ok=0
        run h "h$i" bridge link set dev ovsbr learning off flood off mcast_flood off bcast_flood off isolated on || ok=0
        run h "h$i" bridge fdb add "$(pod_mac "$j")" dev ovsbr master static || ok=0
        run h "p$i" ip neigh add "10.40.0.$j" lladdr "$(pod_mac "$j")" dev eth0 nud permanent
        flows "$i" "$(port_no "h$i" ovsbr)"
    done
    ((ok)) || { results+=("internal-quiet: setup FAILED"); return 1; }
    ping_pods internal-quiet
    probe_flooding internal-quiet
    show h1 h2
    show_bridge h1
}

variant_veth() { # Weave's way: a veth pair between the bridge and an OVS netdev vport
    local i ok=1
    underlay
    for i in 1 2; do
        bridge_and_pod "$i"
        datapath "$i" "h$i" || ok=0
        h "h$i" ip link add vethwe-bridge type veth peer name vethwe-datapath
        h "h$i" ip link set vethwe-bridge master weft up
        h "h$i" ip link set vethwe-datapath up
        run h "h$i" ovs-dpctl add-if "dp$i" vethwe-datapath || ok=0
        flows "$i" "$(port_no "h$i" vethwe-datapath)"
    done
    ((ok)) || { results+=("veth: setup FAILED"); return 1; }
    ping_pods veth
    show h1
    show_bridge h1
}

variant_local_port() { # the datapath's own local port (port 0) on the bridge
    local i ok=1
    underlay
    for i in 1 2; do
        bridge_and_pod "$i"
        datapath "$i" "h$i" || ok=0
        run h "h$i" ip link set "dp$i" master weft up || ok=0
        flows "$i" 0
    done
    ((ok)) || { results+=("local-port: setup FAILED"); return 1; }
    ping_pods local-port
    show h1
    show_bridge h1
}

variant_split_netns() { # datapath in hI, its internal vport moved to bI with the bridge and pod
    local i ok=1
    underlay
    for i in 1 2; do
        ip netns add "b$i-$S"
        h "b$i" ip link set lo up
        bridge_and_pod "$i" "b$i"
        datapath "$i" "h$i" || ok=0
        run h "h$i" ovs-dpctl add-if "dp$i" ovsbr,type=internal || ok=0
        flows "$i" "$(port_no "h$i" ovsbr)"
        run h "h$i" ip link set ovsbr netns "b$i-$S" || ok=0
        run h "b$i" ip link set ovsbr master weft up || ok=0
    done
    ((ok)) || { results+=("split-netns: setup FAILED"); return 1; }
    ping_pods split-netns
    show h1
    run h b1 ip -d link show ovsbr
    show_bridge b1
}

echo "== kernel $(uname -r); $(ovs-dpctl --version | head -n 1)"
variants=("$@")
((${#variants[@]} > 0)) || variants=(internal internal-quiet veth local-port split-netns)
for v in "${variants[@]}"; do
    echo
    echo "======== variant $v"
    "variant_${v//-/_}"
    teardown
done
echo
echo "======== results"
printf '  %s\n' "${results[@]}"
