"""Installs the pycls package (EfficientNet-B3 and the pycls model zoo)."""

from setuptools import find_packages, setup

with open("requirements.txt") as f:
    requirements = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]

setup(
    name="pycls",
    version="0.1.0",
    description="EfficientNet (B3 first) training on CPU, NVIDIA GPUs and Ascend NPUs",
    license="MIT",
    packages=find_packages(include=["pycls", "pycls.*"]),
    python_requires=">=3.8",
    install_requires=requirements,
    extras_require={"onnx": ["onnx", "onnxruntime"], "bench": ["timm"]},
)
