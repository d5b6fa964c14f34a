-- The Pod Security Standard each tier's pods must meet (Tenantry's pod policies read it).
ALTER TABLE tiers
    ADD COLUMN pod_security text NOT NULL DEFAULT 'baseline'
        CHECK (pod_security IN ('baseline', 'restricted'));
