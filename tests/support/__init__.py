"""Test support shared by the tests and benchmarks: the Kubernetes API emulator and runners (operator), tiny model
directories (tiny_models: serving)."""

from .emulator import KubeforgeEmulator
from .runner import EmulatorServer, OperatorRunner, cli_process, emulator_settings

__all__ = ["EmulatorServer", "KubeforgeEmulator", "OperatorRunner", "cli_process", "emulator_settings"]
