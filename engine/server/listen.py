"""The server's listening socket, claimed before anything slow happens."""
import errno
import socket


def claim_port(host: str, port: int) -> socket.socket:
    """Binds and listens at once, as uvicorn would later: SO_REUSEADDR lets a restart take a port still in
    TIME_WAIT, and only a listening socket keeps a second SO_REUSEADDR binder off the port on Linux."""
    # The family as uvicorn picks it: "localhost" means IPv4 there, whatever name resolution would put first.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except socket.gaierror as e:
        sock.close()
        raise ValueError(f"--host {host!r} is not an address this machine can bind: {e.strerror}") from None
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is already in use (another server?); "
                             f"stop it or choose another port with --port") from None
        if e.errno == errno.EACCES:
            raise ValueError(f"port {port} on {host} needs privileges this user lacks; "
                             f"choose a port above 1023 with --port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ValueError(f"--host {host} is not an address of this machine") from None
        raise ValueError(f"cannot listen on {host}:{port} (--host, --port): {e.strerror}") from None
    sock.set_inheritable(False)
    return sock
