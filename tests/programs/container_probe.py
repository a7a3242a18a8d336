"""Report where a container runs: its network namespace, its pod's environment and its cwd.

Usage: container_probe.py
Prints one line: "netns INODE POD_NAME POD_IP GREETING CWD", from /proc/self/ns/net and the
POD_NAME, POD_IP and GREETING environment variables.
"""
import os

print('netns', os.stat('/proc/self/ns/net').st_ino, os.environ['POD_NAME'],
      os.environ['POD_IP'], os.environ['GREETING'], os.getcwd())
