"""Azurite (Microsoft's Azure Storage emulator, from npm; ``make setup`` installs it) on 127.0.0.1."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from tests.serverprocess import ServerProcess

#: Azurite's documented development account and key (public, not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BINARY = Path(__file__).resolve().parents[1] / ".venv" / "node" / "node_modules" / ".bin" / "azurite-blob"


class Azurite(ServerProcess):
    """``azurite-blob`` as a child process with its data in a temporary directory."""

    def __init__(self) -> None:
        super().__init__()
        self.endpoint = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        self.dir = tempfile.mkdtemp(prefix="azurite-")

    def start(self) -> Azurite:
        args = ["--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", self.dir, "--silent"]
        self.launch([str(BINARY), *args, "--skipApiVersionCheck", "--loose"], "azurite")
        host = f"127.0.0.1:{self.port}"
        self.fs = pafs.AzureFileSystem(
            account_name=ACCOUNT,
            account_key=KEY,
            blob_storage_authority=host,
            dfs_storage_authority=host,
            blob_storage_scheme="http",
            dfs_storage_scheme="http",
        )
        return self

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": KEY}

    def new_container(self) -> str:
        name = f"cont{uuid.uuid4().hex[:10]}"
        self.fs.create_dir(name)
        return name

    def keys(self, container: str, prefix: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(f"{container}/{prefix}", recursive=True, allow_not_found=True))
        return sorted(i.path[len(container) + len(prefix) + 2 :] for i in infos if i.type == pafs.FileType.File)
