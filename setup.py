from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="aitoolbox",
    version="0.1.0",
    description="PyTorch training loop: exact, fast, with DDP, AMP, callbacks and experiment tracking",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["aitoolbox", "aitoolbox.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1,<3",
        "numpy",
        "tqdm",
        "boto3>=1.28.57",
    ],
    extras_require={
        "plots": ["matplotlib"],
        "yaml": ["pyyaml"],
        "tensorboard": ["tensorboard", "google-crc32c"],
        "mlflow": ["mlflow"],
        "gcs": ["google-cloud-storage"],
        "wandb": ["wandb"],
        "torchmetrics": ["torchmetrics"],
        "hf": ["evaluate"],
        "dev": [
            "pytest",
            "pytest-timeout",
            "moto[server]>=5",
            "scikit-learn",
            "matplotlib",
            "pyyaml",
            "sphinx",
            "myst-parser",
            "tensorboard",
            "google-crc32c",
            "mlflow",
            "google-cloud-storage",
            "gcp-storage-emulator",
            "wandb",
            "torchmetrics",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
