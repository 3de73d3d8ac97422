"""Airflow DAG: slime RL training pipeline for recipe qwen3-4b (include/recipes/qwen3-4b.yaml)."""
from slimeflow.factory import build_dag

dag = build_dag("qwen3-4b")
