"""Prints which compiler and Python the image carries."""
import platform
import shutil

print("python", platform.python_version())
print("cc", shutil.which("cc"))
