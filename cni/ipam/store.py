"""host-local's on-disk store, in the Go plugin's layout so both can take turns on one node.

``<dataDir>/<network>/<ip>`` holds ``<containerID>\\r\\n<ifname>``; ``last_reserved_ip.<n>``
holds the last address handed out from range set ``n``; ``lock`` is flock()ed around every
change. Reservations are created with O_EXCL, so a lost race shows as "taken", never as a
shared address.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os

from cni import spec
from cni.spec import CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
LAST_IP_PREFIX = "last_reserved_ip."
LINE_BREAK = "\r\n"


def _io_error(action: str, err: OSError) -> CNIError:
    return CNIError(spec.IO_FAILURE, f"host-local: {action}: {err.strerror or err}", str(err))


class Store:
    """One network's reservations. Use as a context manager: it holds the lock inside."""

    def __init__(self, network: str, data_dir: str | None = None) -> None:
        self.dir = os.path.join(data_dir or DEFAULT_DATA_DIR, network)
        self._lock_fd = -1

    def __enter__(self) -> "Store":
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            self._lock_fd = os.open(os.path.join(self.dir, "lock"),
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except OSError as e:
            raise _io_error(f"cannot open store {self.dir}", e) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = -1

    def reserve(self, container_id: str, ifname: str, ip: ipaddress._BaseAddress,
                range_id: int) -> bool:
        path = os.path.join(self.dir, str(ip))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        except OSError as e:
            raise _io_error(f"cannot reserve {ip}", e) from None
        try:
            os.write(fd, (container_id.strip() + LINE_BREAK + ifname).encode())
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            raise _io_error(f"cannot reserve {ip}", e) from None
        os.close(fd)
        self._write(LAST_IP_PREFIX + str(range_id), str(ip))
        return True

    def _write(self, name: str, text: str) -> None:
        try:
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        except OSError as e:
            raise _io_error(f"cannot write {name}", e) from None

    def last_reserved(self, range_id: int) -> ipaddress._BaseAddress | None:
        try:
            with open(os.path.join(self.dir, LAST_IP_PREFIX + str(range_id))) as f:
                return ipaddress.ip_address(f.read().strip())
        except (OSError, ValueError):
            return None

    def reservations(self) -> Iterator[tuple[ipaddress._BaseAddress, str, str]]:
        """(ip, containerID, ifname) of every reservation file."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue  # lock, last_reserved_ip.N, stray files
            try:
                with open(os.path.join(self.dir, name), newline="") as f:
                    data = f.read().strip()
            except OSError:
                continue
            cid, _, ifname = data.partition(LINE_BREAK)
            yield ip, cid.strip(), ifname.strip()

    def get_by_id(self, container_id: str, ifname: str) -> list[ipaddress._BaseAddress]:
        cid = container_id.strip()
        # Files written without an ifname (older plugins) match on the container ID alone.
        return [ip for ip, c, i in self.reservations() if c == cid and i in (ifname, "")]

    def release(self, ip: ipaddress._BaseAddress) -> None:
        try:
            os.unlink(os.path.join(self.dir, str(ip)))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _io_error(f"cannot release {ip}", e) from None

    def release_by_id(self, container_id: str, ifname: str) -> list[ipaddress._BaseAddress]:
        ips = self.get_by_id(container_id, ifname)
        for ip in ips:
            self.release(ip)
        return ips
