"""Test support shared by the operator's tests and benchmark: the Kubernetes API emulator and runners."""

from .emulator import KubeforgeEmulator
from .runner import EmulatorServer, OperatorRunner, cli_process, emulator_settings

__all__ = ["EmulatorServer", "KubeforgeEmulator", "OperatorRunner", "cli_process", "emulator_settings"]
