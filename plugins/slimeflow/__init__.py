"""slimeflow: Airflow DAGs that run slime RL training on GPU nodes over SSH."""
__version__ = "0.1.0"
