-- Tenant lifecycle. A tenant may be soft-deleted (`deleted`: everything blocked, data kept until
-- `purge_after`, when the provisioning controller deletes its namespaces), and suspension may
-- scale a tenant's workloads to zero (per tier, overridable per tenant).
ALTER TABLE tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE tenants
    ADD CONSTRAINT tenants_status_check CHECK (status IN ('active', 'suspended', 'deleted'));
ALTER TABLE tenants ADD COLUMN purge_after timestamptz;
ALTER TABLE tenants
    ADD CONSTRAINT tenants_purge_only_when_deleted CHECK (purge_after IS NULL OR status = 'deleted');
ALTER TABLE tenants ADD COLUMN scale_down_on_suspend boolean;
ALTER TABLE tiers ADD COLUMN scale_down_on_suspend boolean NOT NULL DEFAULT false;
