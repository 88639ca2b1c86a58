-- The instance that published an invalidation (NULL: the command line, or a row written before
-- this column existed). An instance applies its own invalidations right after their commit, so
-- its poller skips them: re-applying a "cut" late could cut a request that started after the
-- access was given back (a subscription suspended, then reactivated).
ALTER TABLE invalidations ADD COLUMN origin TEXT;
