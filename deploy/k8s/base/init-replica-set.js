// Initialise Slotstream's MongoDB replica set and enable change-stream pre-images.
// Idempotent: safe to run again and again. Run with mongosh against one member:
//   mongosh --quiet --norc --file init-replica-set.js
// Used as the Compose healthcheck of `mongo` (exit 0 only once a writable primary exists
// and the collections are prepared) and by the Kubernetes init Job.
//
// Environment:
//   RS_NAME                replica set name                         (rs0)
//   RS_MEMBERS             comma-separated host:port of the members  (mongo:27017)
//                          the first one gets the highest priority
//   SLOTSTREAM_DB          database of the collections below         (slotstream)
//   PRE_IMAGE_COLLECTIONS  collections that get changeStreamPreAndPostImages, so the
//                          publisher can map a hand-made hard delete from its pre-image
//                          (slots,bookings,notifications; empty: none)
//   WAIT_SECONDS           how long to wait for a primary            (0: check once)
//   MONGO_ADMIN_USERNAME   user to authenticate as (admin database)   (admin)
//   MONGO_ADMIN_PASSWORD_FILE  its password; unset: no authentication (a keyfile-less
//                          development replica set)
//   SERVICE_PASSWORDS_DIR  folder with booking-api-password and change-publisher-password:
//                          create (or update the password of) one user per service with
//                          the least privilege it needs (unset: no users)
//
// Users (in the admin database, authSource=admin):
//   booking-api       readWrite on SLOTSTREAM_DB (its collections and indexes), and role
//                     slotstreamBookingApi: collMod on SLOTSTREAM_DB.notifications only, so
//                     a changed notification retention changes the TTL index in place
//   change-publisher  role slotstreamChangePublisher: find + changeStream on SLOTSTREAM_DB,
//                     and writes only to its own publisher_checkpoints / publisher_leases

const rsName = process.env.RS_NAME || "rs0";
const members = (process.env.RS_MEMBERS || "mongo:27017")
  .split(",")
  .map((host) => host.trim())
  .filter((host) => host.length > 0);
const dbName = process.env.SLOTSTREAM_DB || "slotstream";
const preImageCollections = (process.env.PRE_IMAGE_COLLECTIONS ?? "slots,bookings,notifications")
  .split(",")
  .map((name) => name.trim())
  .filter((name) => name.length > 0);
const waitSeconds = Number(process.env.WAIT_SECONDS || "0");
const adminUser = process.env.MONGO_ADMIN_USERNAME || "admin";
const adminPasswordFile = process.env.MONGO_ADMIN_PASSWORD_FILE || "";
const servicePasswordsDir = process.env.SERVICE_PASSWORDS_DIR || "";
const PUBLISHER_ROLE = "slotstreamChangePublisher";
const PUBLISHER_OWN_COLLECTIONS = ["publisher_checkpoints", "publisher_leases"];
const BOOKING_API_ROLE = "slotstreamBookingApi";

function readSecret(path) {
  return require("fs").readFileSync(path, "utf8").trim();
}

const adminPassword = adminPasswordFile ? readSecret(adminPasswordFile) : "";

function authenticate() {
  if (adminPassword) {
    db.getSiblingDB("admin").auth(adminUser, adminPassword);
  }
}

function initiateIfNeeded() {
  try {
    rs.status();
    return false;
  } catch (error) {
    // 94 NotYetInitialized: a fresh member. Anything else is a real problem.
    if (error.code !== 94 && error.codeName !== "NotYetInitialized") {
      throw error;
    }
  }
  const config = {
    _id: rsName,
    members: members.map((host, index) => ({ _id: index, host, priority: index === 0 ? 2 : 1 })),
  };
  rs.initiate(config);
  print(`slotstream: initiated replica set ${rsName} with ${members.join(", ")}`);
  return true;
}

function primaryDatabase() {
  const deadline = Date.now() + waitSeconds * 1000;
  for (;;) {
    const hello = db.adminCommand({ hello: 1 });
    if (hello.isWritablePrimary) {
      return db.getSiblingDB(dbName);
    }
    if (hello.primary) {
      // Connected to a secondary: do the collection work on the primary.
      const credentials = adminPassword
        ? `${encodeURIComponent(adminUser)}:${encodeURIComponent(adminPassword)}@`
        : "";
      const options = adminPassword ? "&authSource=admin" : "";
      return connect(`mongodb://${credentials}${hello.primary}/${dbName}?directConnection=true${options}`);
    }
    if (Date.now() >= deadline) {
      print(`slotstream: replica set ${rsName} has no primary yet`);
      quit(1);
    }
    sleep(1000);
  }
}

function enablePreImages(target) {
  const existing = new Map(target.getCollectionInfos().map((info) => [info.name, info]));
  for (const name of preImageCollections) {
    const info = existing.get(name);
    if (info === undefined) {
      target.createCollection(name, { changeStreamPreAndPostImages: { enabled: true } });
      print(`slotstream: created ${dbName}.${name} with pre-images`);
    } else if (!(info.options.changeStreamPreAndPostImages || {}).enabled) {
      target.runCommand({ collMod: name, changeStreamPreAndPostImages: { enabled: true } });
      print(`slotstream: enabled pre-images on ${dbName}.${name}`);
    }
  }
}

function upsertRole(admin, name, privileges) {
  if (admin.getRole(name) === null) {
    admin.createRole({ role: name, privileges, roles: [] });
    print(`slotstream: created role ${name}`);
  } else {
    admin.updateRole(name, { privileges, roles: [] });
  }
}

function upsertUser(admin, name, roles) {
  const password = readSecret(`${servicePasswordsDir}/${name}-password`);
  if (admin.getUser(name) === null) {
    admin.createUser({ user: name, pwd: password, roles });
    print(`slotstream: created user ${name}`);
  } else {
    // Keeps the password in step with the secret (rotation: change the secret, rerun), and
    // the roles with this script (an upgrade that adds a role: rerun).
    admin.updateUser(name, { pwd: password, roles });
  }
}

function ensureServiceUsers(target) {
  if (!servicePasswordsDir) {
    return;
  }
  const admin = target.getSiblingDB("admin");
  const ownCollection = (collection) => ({
    resource: { db: dbName, collection },
    actions: ["find", "insert", "update", "remove", "createCollection", "createIndex"],
  });
  upsertRole(admin, PUBLISHER_ROLE, [
    { resource: { db: dbName, collection: "" }, actions: ["find", "changeStream"] },
    ...PUBLISHER_OWN_COLLECTIONS.map(ownCollection),
  ]);
  upsertRole(admin, BOOKING_API_ROLE, [
    { resource: { db: dbName, collection: "notifications" }, actions: ["collMod"] },
  ]);
  upsertUser(admin, "booking-api", [
    { role: "readWrite", db: dbName },
    { role: BOOKING_API_ROLE, db: "admin" },
  ]);
  upsertUser(admin, "change-publisher", [{ role: PUBLISHER_ROLE, db: "admin" }]);
}

authenticate();
initiateIfNeeded();
const primary = primaryDatabase();
enablePreImages(primary);
ensureServiceUsers(primary);
