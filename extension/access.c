/*-------------------------------------------------------------------------
 *
 * access.c
 *	  Who is calling, and which tenants they may act as: the binding of
 *	  roles to tenants (tq_grant_tenant), and lease tokens.
 *
 * The caller.  Every API function runs as the extension's owner (SECURITY
 * DEFINER), so current_user inside it says nothing about who called.  tq
 * identifies the caller as the session's outer role: the role SET ROLE
 * chose, else the login role (GetOuterUserId).  A SECURITY DEFINER
 * function of the application does not change it, so a bound login role
 * cannot slip out of its binding through someone's definer function, and
 * SET ROLE to a bound role (the connection-pool pattern) binds the
 * session.
 *
 * The binding.  tq.tenant_grant holds (role, tenant, queue) rows.  A role
 * with no row is unbound and keeps what the documented roles give it; a
 * role with rows is bound and may submit as, read, wait on and cancel the
 * tasks of those tenants only (queue NULL: in every queue).  Members of
 * tq_admin are never bound.
 *
 * The cache.  tq_submit's common case must stay two kept plans, so the
 * grants of the caller are read once per backend and kept until the table
 * changes: tq_grant_tenant and tq_revoke_tenant call tq.grants_changed(),
 * which queues a relcache invalidation of tq.tenant_grant, sent to every
 * backend at commit (and applied in this one at the end of the command);
 * the callback drops the cache.  The cache is also dropped when the
 * caller changes (SET ROLE).  The table is read with a plain heap scan,
 * not SPI, because the views that call tq.tenant_allowed run as their
 * reader, who has no rights on schema tq.
 *
 * Lease tokens.  tq_lease gives each lease a random 63-bit token from
 * pg_strong_random.  Unlike the attempt number it cannot be guessed, and
 * it is not handed out twice after a crash that lost a lease's commit (a
 * sequence can be: its WAL is lost with the commit).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "tq.h"

PG_FUNCTION_INFO_V1(tq_caller);
PG_FUNCTION_INFO_V1(tq_caller_bound);
PG_FUNCTION_INFO_V1(tq_tenant_allowed);
PG_FUNCTION_INFO_V1(tq_check_tenant);
PG_FUNCTION_INFO_V1(tq_grants_changed);
PG_FUNCTION_INFO_V1(tq_lease_token);

typedef struct Grant
{
	char *tenant;
	char *queue; /* NULL: every queue */
} Grant;

static bool cache_valid = false;
static bool callback_registered = false;
static Oid cache_role = InvalidOid;
static Oid cache_relid = InvalidOid; /* tq.tenant_grant when loaded */
static int cache_n = 0;
static Grant *cache_grants = NULL;
static MemoryContext cache_cxt = NULL;

static void
grants_inval(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == cache_relid)
		cache_valid = false;
}

static Oid
grant_relid(void)
{
	Oid nsp = get_namespace_oid("tq", true);

	if (!OidIsValid(nsp))
		return InvalidOid;
	return get_relname_relid("tenant_grant", nsp);
}

/* Reads the caller's rows of tq.tenant_grant into the cache. */
static void
load_grants(Oid role)
{
	Relation rel;
	TableScanDesc scan;
	HeapTuple tup;
	int cap = 8;
	Oid relid;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(grants_inval, (Datum) 0);
		callback_registered = true;
	}
	if (cache_cxt == NULL)
		cache_cxt =
			AllocSetContextCreate(TopMemoryContext, "tq tenant grants", ALLOCSET_SMALL_SIZES);
	MemoryContextReset(cache_cxt);
	cache_grants = NULL;
	cache_n = 0;
	cache_role = role;
	relid = grant_relid();
	cache_relid = relid;
	/* Before the extension's 0.7.0 there is no table: nobody is bound. */
	if (!OidIsValid(relid))
	{
		cache_valid = true;
		return;
	}

	cache_grants = MemoryContextAlloc(cache_cxt, cap * sizeof(Grant));
	rel = table_open(relid, AccessShareLock);
	scan = table_beginscan(
		rel, GetActiveSnapshot() ? GetActiveSnapshot() : GetTransactionSnapshot(), 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool isnull;
		Datum d = heap_getattr(tup, 1, RelationGetDescr(rel), &isnull);

		if (isnull || DatumGetObjectId(d) != role)
			continue;
		if (cache_n == cap)
		{
			cap *= 2;
			cache_grants = repalloc(cache_grants, cap * sizeof(Grant));
		}
		d = heap_getattr(tup, 2, RelationGetDescr(rel), &isnull);
		cache_grants[cache_n].tenant =
			isnull ? NULL : MemoryContextStrdup(cache_cxt, TextDatumGetCString(d));
		d = heap_getattr(tup, 3, RelationGetDescr(rel), &isnull);
		cache_grants[cache_n].queue =
			isnull ? NULL : MemoryContextStrdup(cache_cxt, TextDatumGetCString(d));
		cache_n++;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	cache_valid = true;
}

/* Whether the caller is a member of tq_admin (never bound). */
static bool
caller_is_admin(Oid role)
{
	Oid admin = get_role_oid("tq_admin", true);

	return OidIsValid(admin) && has_privs_of_role(role, admin);
}

/* Whether the caller is bound: has grants and is no admin. */
bool
tq_caller_is_bound(void)
{
	Oid role = GetOuterUserId();

	if (!cache_valid || cache_role != role)
		load_grants(role);
	return cache_n > 0 && !caller_is_admin(role);
}

bool
tq_tenant_ok(const char *queue, const char *tenant)
{
	if (!tq_caller_is_bound())
		return true;
	if (tenant == NULL)
		return false;
	for (int i = 0; i < cache_n; i++)
		if (strcmp(cache_grants[i].tenant, tenant) == 0 &&
			(cache_grants[i].queue == NULL || queue == NULL ||
			 strcmp(cache_grants[i].queue, queue) == 0))
			return true;
	return false;
}

/*
 * tq.caller() returns oid: the role tq acts for (see the file comment).
 */
Datum
tq_caller(PG_FUNCTION_ARGS)
{
	PG_RETURN_OID(GetOuterUserId());
}

/*
 * tq.caller_bound() returns boolean: whether the caller is bound to
 * tenants.
 */
Datum
tq_caller_bound(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(tq_caller_is_bound());
}

/*
 * tq.tenant_allowed(queue text, tenant text) returns boolean
 *
 * Whether the caller may act as this tenant in this queue: always when
 * unbound (or an admin), else only for a granted tenant; a task without a
 * tenant belongs to no bound role.  queue NULL: in any queue.
 */
Datum
tq_tenant_allowed(PG_FUNCTION_ARGS)
{
	char *queue = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char *tenant = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));

	PG_RETURN_BOOL(tq_tenant_ok(queue, tenant));
}

/*
 * tq.check_tenant(queue text, tenant text) returns void
 *
 * Raises 42501 unless the caller may submit as this tenant to this queue.
 */
Datum
tq_check_tenant(PG_FUNCTION_ARGS)
{
	char *queue = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char *tenant = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));

	tq_require_tenant(queue, tenant);
	PG_RETURN_VOID();
}

void
tq_require_tenant(const char *queue, const char *tenant)
{
	StringInfoData list;

	if (tq_tenant_ok(queue, tenant))
		return;
	initStringInfo(&list);
	for (int i = 0; i < cache_n && i < 10; i++)
		appendStringInfo(&list, "%s%s%s%s", i ? ", " : "", cache_grants[i].tenant,
						 cache_grants[i].queue ? " in queue " : "",
						 cache_grants[i].queue ? cache_grants[i].queue : "");
	if (cache_n > 10)
		appendStringInfo(&list, " and %d more", cache_n - 10);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 tenant ? errmsg("role \"%s\" may not submit as tenant \"%s\" to queue \"%s\"",
							 GetUserNameFromId(GetOuterUserId(), false), tenant, queue ? queue : "")
					: errmsg("role \"%s\" must name one of its tenants",
							 GetUserNameFromId(GetOuterUserId(), false)),
			 errdetail("The role is bound to tenants by tq_grant_tenant: %s.", list.data),
			 errhint("Pass tenant => one of these, or ask an administrator to grant the tenant "
					 "with tq_grant_tenant.")));
}

/*
 * tq.grants_changed() returns void: drops every backend's cache of
 * tq.tenant_grant when this transaction commits.
 */
Datum
tq_grants_changed(PG_FUNCTION_ARGS)
{
	Oid relid = grant_relid();

	if (OidIsValid(relid))
		CacheInvalidateRelcacheByRelid(relid);
	cache_valid = false;
	PG_RETURN_VOID();
}

/*
 * tq.lease_token() returns bigint: a random token in [1, 2^63 - 1].
 */
Datum
tq_lease_token(PG_FUNCTION_ARGS)
{
	/*
	 * pg_strong_random costs some 3.5 us a call (OpenSSL's RAND_bytes),
	 * as much as a tenth of a batch lease's work per task: it fills 64
	 * tokens at a time.  Each is used once and then wiped.
	 */
	static uint64 pool[64];
	static int left = 0;
	uint64 r;

	do
	{
		if (left == 0)
		{
			if (!pg_strong_random(pool, sizeof(pool)))
				ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
								errmsg("could not generate a random lease token")));
			left = lengthof(pool);
		}
		r = pool[--left] & UINT64CONST(0x7FFFFFFFFFFFFFFF);
		pool[left] = 0;
	} while (r == 0);
	PG_RETURN_INT64((int64) r);
}
