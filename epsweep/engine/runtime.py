"""How this process should run JAX: the :class:`Runtime` a user asks for, checked without
starting (or importing) JAX. :mod:`epsweep.engine.devices` applies it."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from epsweep.errors import UserError, param

CACHE_ENV = "EPSWEEP_COMPILE_CACHE"
CACHE_MAX_BYTES = 2 * 1024**3  # least recently used entries go beyond this
_OFF = ("0", "off", "false", "no", "none", "")  # any case; a directory so named: ./none
_ADDRESS = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:(\d{1,9})$")
DEFAULT_JOIN_TIMEOUT_S = 300  # JAX's own default for jax.distributed.initialize
MAX_JOIN_TIMEOUT_S = 86_400


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How this process runs JAX.

    ``compile_cache``: True for the default directory, False for none, or a directory.
    ``cpu_devices``: JAX devices to make of the CPU (default: one per available core).
    ``coordinator`` ("host:port" of process 0), ``num_processes`` and ``process_id``: run as
    one of several processes; what is left out is taken from the cluster environment.
    ``join_timeout_s``: how long to wait for the coordinator and the other processes.
    Checked when made, without starting JAX; :func:`epsweep.setup` applies it.

    Example:
        >>> Runtime(coordinator="10.0.0.1:1234", num_processes=2, process_id=0).distributed
        True
    """

    compile_cache: bool | str | Path = True
    cpu_devices: int | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    join_timeout_s: int = DEFAULT_JOIN_TIMEOUT_S

    def __post_init__(self) -> None:
        if isinstance(self.join_timeout_s, bool) or not isinstance(self.join_timeout_s, int) or not (
                1 <= self.join_timeout_s <= MAX_JOIN_TIMEOUT_S):
            raise UserError(f"{param('join_timeout_s')}: {self.join_timeout_s!r} must be a whole number of seconds "
                            f"from 1 to {MAX_JOIN_TIMEOUT_S:,}")
        if self.cpu_devices is not None and self.cpu_devices < 1:
            raise UserError(f"{param('cpu_devices')}: {self.cpu_devices} must be a positive integer")
        if self.num_processes is not None and self.num_processes < 1:
            raise UserError(f"{param('num_processes')}: {self.num_processes} must be a positive integer")
        if self.process_id is not None and self.process_id < 0:
            raise UserError(f"{param('process_id')}: {self.process_id} must be >= 0")
        if self.num_processes is not None and self.process_id is not None and self.process_id >= self.num_processes:
            raise UserError(f"{param('process_id')}: {self.process_id} must be below {param('num_processes')} "
                            f"{self.num_processes}")
        if self.coordinator is not None:
            match = _ADDRESS.match(self.coordinator)
            if not match:
                raise UserError(f"{param('coordinator')}: {self.coordinator!r} is not host:port")
            if not 1 <= int(match.group(1)) <= 65535:
                raise UserError(f"{param('coordinator')}: port {int(match.group(1))} is not a TCP port (1-65535)")

    @property
    def distributed(self) -> bool:
        """Whether this process is one of several (flags given, or a launcher started several)."""
        given = (self.coordinator, self.num_processes, self.process_id)
        if any(v is not None for v in given):
            return self.num_processes != 1
        return launcher_process_count() > 1



def coordinator_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[ipv6]:port"``) as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def launcher_process_count() -> int:
    """How many processes a cluster launcher started for this job step (1 when none did)."""
    env = os.environ
    candidates = [env.get("OMPI_COMM_WORLD_SIZE"), env.get("PMI_SIZE")]
    if "SLURM_STEP_ID" in env:  # inside srun, not merely inside an allocation
        candidates += [env.get("SLURM_STEP_NUM_TASKS"), env.get("SLURM_NTASKS")]
    for value in candidates:
        if value and value.isdigit():
            return int(value)
    return 1


_JAX_FLAG = re.compile(r"for JAX flag (\w+)")


def jax_environment_error(error: BaseException) -> UserError | None:
    """JAX refusing the value of one of its environment variables (``JAX_NUM_CPU_DEVICES=abc``,
    read when JAX defines its flags: at import, or at the first use of a module that defines
    some) as a one-line UserError naming the variable; None for any other error."""
    if not isinstance(error, ValueError) or isinstance(error, UserError):
        return None
    frames = [error.__traceback__]
    while frames[-1] is not None and frames[-1].tb_next is not None:
        frames.append(frames[-1].tb_next)
    if frames[-1] is None or Path(frames[-1].tb_frame.f_code.co_filename).parts[-3:] != ("jax", "_src", "config.py"):
        return None
    message = " ".join(str(error).split()) or type(error).__name__
    flag = _JAX_FLAG.search(message)
    names = [flag.group(1).upper()] if flag else [  # else the variables whose value JAX quotes
        name for name, value in sorted(os.environ.items())
        if name.startswith("JAX_") and value and (repr(value) in message or f'"{value}"' in message)]
    names = [name for name in names if name in os.environ and name not in message]
    source = f" (from the environment variable {' or '.join(names)})" if names else ""
    return UserError(f"JAX cannot start: {message}{source}")


def default_cache_dir() -> Path | None:
    """The compilation cache directory the environment asks for, or None when it is turned off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "epsweep" / "jax"


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1
