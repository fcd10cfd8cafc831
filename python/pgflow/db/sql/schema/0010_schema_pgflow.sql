-- The schema of pgflow. One file per object in this folder, applied in file-number order; every
-- table's file holds the indexes that keep its hot queries on an index.
--
-- Lock order, everywhere: the run row first (for update), then step states, then tasks. Every
-- function that changes a run's counters takes the run lock, so per-run bookkeeping is serial
-- and deadlock-free.
--
-- `if not exists`: `pgflow db migrate` creates the schema before the first migration, to hold
-- its table pgflow.migrations.

create schema if not exists pgflow;
