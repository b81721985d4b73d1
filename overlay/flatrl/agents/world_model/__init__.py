"""The world-model agent: VQ-VAE vision, temporal-transformer memory, planning controllers,
trained with A2C and GAE (or REINFORCE with a value baseline) on vectorised gymnasium
environments.

Run it as ``python -m flatrl.agents.world_model --env-name CartPole-v1 --use-improved-controller
--use-a2c``. One epoch is one rollout of ``n_steps x n_envs`` env steps followed by
``--update-epochs`` passes over it in ``--num-minibatches`` gradient steps each (see
``config.py``).
"""
