"""Starting a job: the preflight (every check before a rank spawns), the launcher behind launch/pretrain_moe.sh
(bash or DeepSpeed's runner, one node or many) and the entry point of each rank."""
