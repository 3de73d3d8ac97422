"""Airflow DAG: slime RL training pipeline for recipe qwen3-next-80b-a3b (include/recipes/qwen3-next-80b-a3b.yaml)."""
from slimeflow.factory import build_dag

dag = build_dag("qwen3-next-80b-a3b")
