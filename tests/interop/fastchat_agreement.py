"""Runs FastChat's own llm_judge/compute_agreement.py (fschat from PyPI) on vote files and prints
its four lines (turn 1/2, with/without ties):
    fastchat_agreement.py JUDGE1 JUDGE2 FILE..."""
import sys

import fastchat.llm_judge.compute_agreement as ca

ca.run_mt_bench_agreement(sys.argv[1:3], sys.argv[3:])
