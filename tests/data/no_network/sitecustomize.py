"""Loaded by the subprocesses of tests/test_offline.py (PYTHONPATH): every attempt to open a network connection or
resolve a host name other than loopback is written to stderr as a `NETWORK:` line and refused."""

import socket
import sys

LOOPBACK = ("localhost", "127.0.0.1", "::1", None)
_getaddrinfo = socket.getaddrinfo


def _refuse(what):
    sys.stderr.write(f"NETWORK: {what}\n")
    raise OSError(f"network denied in this test: {what}")


def _connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if host in LOOPBACK or isinstance(address, (str, bytes)):  # loopback and Unix sockets are local
        return _socket_connect(self, address)
    _refuse(f"connect {address}")


def _create_connection(address, *args, **kwargs):
    if address[0] in LOOPBACK:
        return _create(address, *args, **kwargs)
    _refuse(f"create_connection {address}")


def _resolve(host, *args, **kwargs):
    if host not in LOOPBACK:
        _refuse(f"getaddrinfo {host}")
    return _getaddrinfo(host, *args, **kwargs)


_socket_connect = socket.socket.connect
_create = socket.create_connection
socket.socket.connect = _connect
socket.create_connection = _create_connection
socket.getaddrinfo = _resolve
