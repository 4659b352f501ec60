#!/usr/bin/env python3
"""A hostile pod's frames, sent raw on eth0 (AF_PACKET).

spoof.py steal IFACE OWN_MAC OWN_IP VICTIM_MAC VICTIM_IP SECONDS
    every 20 ms, one frame of each kind a port guard must drop:
    mac: a gratuitous ARP and an IPv4 UDP datagram with the victim's source MAC and address;
    arp: a gratuitous ARP from our own MAC claiming the victim's address, and one whose
         sender hardware address is the victim's;
    ip:  IPv4 from our own MAC with the victim's address as source;
    nd:  an IPv6 router advertisement from our own link-local address, and a neighbour
         advertisement claiming the victim's link-local address;
    ethertype: a frame of a local experimental ethertype (0x88b5).
spoof.py flood IFACE COUNT
    COUNT frames, each from a new random (unicast, locally administered) source MAC, of a
    local experimental ethertype (not IPv4: the bridge would drop a bogus IP header).
Prints how many frames it sent.
"""
import os
import socket
import struct
import sys
import time

BROADCAST = b"\xff" * 6


def mac(text):
    return bytes(int(b, 16) for b in text.split(":"))


def ip4(text):
    return socket.inet_aton(text)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def arp(src_mac, sender_mac, sender_ip, target_ip):
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + sender_mac + sender_ip + BROADCAST + target_ip
    return BROADCAST + src_mac + b"\x08\x06" + body


def udp4(src_mac, src_ip, dst_ip):
    payload = b"weft spoof test"
    udp = struct.pack("!HHHH", 40000, 40001, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, src_ip, dst_ip)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return BROADCAST + src_mac + b"\x08\x00" + header + udp


def link_local(m):
    return b"\xfe\x80" + b"\0" * 6 + bytes([m[0] ^ 2, m[1], m[2], 0xFF, 0xFE, m[3], m[4], m[5]])


def router_advert(src_mac):
    icmp = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    dst = b"\xff\x02" + b"\0" * 13 + b"\x01"
    header = struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + link_local(src_mac) + dst
    return b"\x33\x33\x00\x00\x00\x01" + src_mac + b"\x86\xdd" + header + icmp


def neighbour_advert(src_mac, target_mac):
    # Solicited+override NA for the target's link-local address, sent from our own one.
    icmp = struct.pack("!BBHI", 136, 0, 0, 0x60000000) + link_local(target_mac)
    icmp += struct.pack("!BB", 2, 1) + src_mac
    dst = b"\xff\x02" + b"\0" * 13 + b"\x01"
    header = struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + link_local(src_mac) + dst
    return b"\x33\x33\x00\x00\x00\x01" + src_mac + b"\x86\xdd" + header + icmp


def main():
    mode, iface = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    sent = 0
    if mode == "steal":
        own_mac, own_ip = mac(sys.argv[3]), ip4(sys.argv[4])
        victim_mac, victim_ip = mac(sys.argv[5]), ip4(sys.argv[6])
        frames = [
            arp(victim_mac, victim_mac, victim_ip, victim_ip),
            udp4(victim_mac, victim_ip, ip4("255.255.255.255")),
            arp(own_mac, own_mac, victim_ip, victim_ip),
            arp(own_mac, victim_mac, own_ip, own_ip),
            udp4(own_mac, victim_ip, ip4("255.255.255.255")),
            router_advert(own_mac),
            neighbour_advert(own_mac, victim_mac),
            BROADCAST + own_mac + b"\x88\xb5" + b"\0" * 46,
        ]
        deadline = time.monotonic() + float(sys.argv[7])
        while time.monotonic() < deadline:
            for frame in frames:
                s.send(frame)
                sent += 1
            time.sleep(0.02)
    elif mode == "flood":
        count = int(sys.argv[3])
        for _ in range(count):
            src = bytearray(os.urandom(6))
            src[0] = (src[0] & 0xFE) | 0x02
            s.send(b"\x02\x00\x00\x00\x00\x01" + bytes(src) + b"\x88\xb5" + b"\0" * 46)
            sent += 1
    print(sent)


if __name__ == "__main__":
    main()
