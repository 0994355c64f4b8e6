"""ament_python package lidar_ssl; also ``pip install -e`` able (tests run its nodes without colcon)."""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "lidar_ssl"
HERE = Path(__file__).resolve().parent


def files(folder: str) -> list[str]:
    return sorted(str(p.relative_to(HERE)) for p in (HERE / folder).glob("*") if p.is_file())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", files("launch")),
        (f"share/{PACKAGE}/config", files("config")),
        (f"share/{PACKAGE}/rviz", files("rviz")),
        (f"share/{PACKAGE}/foxglove", files("foxglove")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="lidar_ssl maintainers",
    maintainer_email="lidar-ssl@example.com",
    description="ROS 2 nodes of lidar_ssl: fleet recorder, bag player, pretraining, live segmentation",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "fleet_recorder = lidar_ssl.fleet_recorder:main",
            "bag_player = lidar_ssl.bag_player:main",
            "pretrain = lidar_ssl.pretrain_node:main",
            "segmenter = lidar_ssl.segmenter:main",
        ],
    },
)
