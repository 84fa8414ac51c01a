"""The built-in tools as App registers them, made from the config; and what their schemas, the
base prompt and the memory files cost in every request before any history (``check-config``
warns with it, building the tools as App does without starting anything)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from ganglion.config import LoadedConfig, secret_values
from ganglion.llm.prompt import PromptInputs, fixed_texts
from ganglion.storage.files import (
    BASE_PROMPT,
    DEFAULT_BASE_PROMPT,
    HEARTBEATS,
    MEMORIES,
    SCRIPTS_DIR,
    WEB_TOKEN,
    DataFiles,
)
from ganglion.storage.lock import LOCK_FILE
from ganglion.storage.media import MEDIA_DIR
from ganglion.tools.files import FileTools, Workspace
from ganglion.tools.memory import MemoryTools
from ganglion.tools.policy import ToolPolicy
from ganglion.tools.registry import ToolFunc, ToolRegistry
from ganglion.tools.reminders import ReminderTools
from ganglion.tools.shell import Shell, shell_environment
from ganglion.tools.web import web_tools
from ganglion.turn.budget import fixed_tokens, schema_tokens
from ganglion.untrusted import neutralise


def workspace_dir(loaded: LoadedConfig) -> Path:
    """Where the file tools work: tools.workspace, else the data folder."""
    cfg = loaded.config.tools
    return loaded.path(cfg.workspace) if cfg.workspace else loaded.data_dir


def tool_workspace(loaded: LoadedConfig) -> Workspace:
    """The file tools' workspace, its private files hidden (files people send are saved
    into its inbox/ through it)."""
    return Workspace(workspace_dir(loaded), _private(loaded),
                     [loaded.source] if loaded.source else [])


def _private(loaded: LoadedConfig) -> list[str]:
    """The name patterns the file and memory tools never touch: tools.private_files and the
    daemon's own files (the Matrix store, the web token, the lock, and data/media/: images
    reach the model as images; the files people send are copied into the workspace's
    inbox/, which is theirs)."""
    config = loaded.config
    data_dir = loaded.data_dir
    work = workspace_dir(loaded)
    private = list(config.tools.private_files)
    for own in (loaded.path(config.matrix.store_path), data_dir / WEB_TOKEN,
                data_dir / LOCK_FILE, data_dir / MEDIA_DIR):
        for root in (work, data_dir):
            if own.resolve().is_relative_to(root.resolve()):
                private.append(own.resolve().relative_to(root.resolve()).as_posix())
    return private


def memory_tools(loaded: LoadedConfig, files: DataFiles) -> MemoryTools:
    """The memory tools over data/; the settings page saves through another made here (the
    same per-file locks of ``files``, the same checks and size cap)."""
    config_file = [loaded.source] if loaded.source else []  # wherever it lies
    return MemoryTools(files, Workspace(loaded.data_dir, _private(loaded), config_file),
                       max_bytes=loaded.config.tools.memory_max_bytes)


def builtin_tools(loaded: LoadedConfig, files: DataFiles) -> tuple[list[ToolFunc], Shell]:
    """The memory, file and shell tools, and the shell (it describes a call for approval)."""
    config = loaded.config
    cfg = config.tools
    scripts = loaded.data_dir / SCRIPTS_DIR
    shell = Shell(scripts, shell_environment(os.environ, cfg.shell_env,
                                             secret_values(config), scripts),
                  timeout_seconds=cfg.shell_timeout_seconds,
                  max_output_bytes=cfg.shell_max_output_bytes)
    memory = memory_tools(loaded, files)
    file_tools = FileTools(tool_workspace(loaded), files, max_read_bytes=cfg.max_read_bytes,
                           max_write_bytes=cfg.max_write_bytes)
    return [*memory.tools(), *file_tools.tools(), *shell.tools()], shell


def fixed_prompt_tokens(loaded: LoadedConfig) -> int:
    """Our estimate of what every request carries before any history: the base prompt, the
    tools line and the schemas of every tool the policy does not switch off, the skills
    index and the memory files as they are on disk now (check-config warns with it). Builds
    the tools as App does, without starting anything; nothing is created on disk."""
    files = DataFiles(loaded.data_dir)
    funcs, _shell = builtin_tools(loaded, files)
    registry = ToolRegistry()
    for func in [*funcs, *web_tools(loaded.config.tools.web)[0]]:
        registry.add(func)
    # Only the reminder tools' signatures count here (the real ones need the scheduler and
    # the bus of a started App).
    for func in ReminderTools.signatures():
        registry.add(func)
    names = sorted(ToolPolicy(loaded.config.tools.policy).offered(registry.names(),
                                                                  can_ask=True))
    base = files.read(BASE_PROMPT) or DEFAULT_BASE_PROMPT.read_text(encoding="utf-8")
    inputs = PromptInputs(
        base_prompt=base, memories=neutralise(files.read(MEMORIES)),
        heartbeats=neutralise(files.read(HEARTBEATS)), skills=files.skills(),
        now=datetime.now().astimezone(), history=(), tool_names=names,
        interface="a browser tab of the web UI")
    return fixed_tokens(fixed_texts(inputs), schema_tokens(registry.schemas(set(names))))
