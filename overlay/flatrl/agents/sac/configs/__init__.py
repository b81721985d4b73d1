"""Hydra config files of the SAC agent (a package so that wheels ship the YAML files)."""
