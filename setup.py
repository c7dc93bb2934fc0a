"""ament_python package that also installs with plain pip."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "seg_perception"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    # The shipped demo checkpoint and its model card (``weights:=synthetic_street``).
    package_data={PACKAGE: ["weights/*.pt", "weights/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    python_requires=">=3.10",
    install_requires=["numpy", "pyyaml", "torch", "torchvision", "timm", "opencv-python-headless",
                      "rosbags", "tqdm", "matplotlib", "onnx", "onnxruntime", "simplejpeg"],
    # GPU backends (docs/BACKENDS.md): onnxruntime-gpu replaces the CPU onnxruntime wheel (uninstall
    # that first); tensorrt adds the libraries ONNX Runtime's TensorRT provider loads.
    extras_require={"crf": ["pydensecrf2"], "cluster": ["ray[default]"], "gpu": ["onnxruntime-gpu"],
                    "tensorrt": ["onnxruntime-gpu", "tensorrt"],
                    "test": ["pytest", "hypothesis", "cityscapesscripts", "ray"]},
    zip_safe=False,  # weights are opened as files
    maintainer="seg_perception maintainers",
    maintainer_email="seg-perception@example.com",
    description="Real-time semantic segmentation node for ROS 2",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "seg_node = seg_perception.process:main",
            "seg-perception = seg_perception.cli:main",
        ],
    },
)
