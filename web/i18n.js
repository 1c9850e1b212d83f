// The notification panel's words in the viewer's language: English, German, French, Spanish.
// The language is the first of `navigator.languages` the catalogue has (English otherwise).
// Dates and times are not here: the page formats them with Intl in the browser's locale and
// time zone and passes them in as `when`.

/** `one` or `other` by the language's plural rules (French counts 0 and 1 as one). */
const plural = (n, forms) => forms[pluralRules.select(n)] ?? forms.other;

// Sentences take `{ student, teacher, when, by }`; a missing name gets the default the
// sentence's grammar needs, and `by` (who cancelled) is optional.
const CATALOGUE = {
  en: {
    notifications: "Notifications",
    empty: "Nothing yet. New bookings and cancellations appear here live.",
    markRead: "Mark all read",
    unread: (n) => `${n} unread`,
    created: "New booking",
    cancelled: "Booking cancelled",
    studentBooked: ({ student = "A student", when }) => `${student} booked your slot on ${when}.`,
    youBooked: ({ teacher = "your instructor", when }) => `You booked ${teacher} on ${when}.`,
    studentCancelled: ({ student = "A student", when, by }) =>
      `${student}'s booking on ${when} was cancelled${by ? ` by ${by}` : ""}.`,
    yoursCancelled: ({ teacher = "your instructor", when, by }) =>
      `Your booking with ${teacher} on ${when} was cancelled${by ? ` by ${by}` : ""}.`,
    reason: (text) => `Reason: “${text}”`,
  },
  de: {
    notifications: "Benachrichtigungen",
    empty: "Noch nichts. Neue Buchungen und Stornierungen erscheinen hier sofort.",
    markRead: "Alle als gelesen markieren",
    unread: (n) => `${n} ungelesen`,
    created: "Neue Buchung",
    cancelled: "Buchung storniert",
    studentBooked: ({ student = "Ein Schüler", when }) => `${student} hat Ihren Termin am ${when} gebucht.`,
    youBooked: ({ teacher = "Ihrer Lehrkraft", when }) => `Sie haben einen Termin bei ${teacher} am ${when} gebucht.`,
    studentCancelled: ({ student, when, by }) =>
      `Die Buchung ${student ? `von ${student}` : "eines Schülers"} am ${when} wurde${by ? ` von ${by}` : ""} storniert.`,
    yoursCancelled: ({ teacher = "Ihrer Lehrkraft", when, by }) =>
      `Ihre Buchung bei ${teacher} am ${when} wurde${by ? ` von ${by}` : ""} storniert.`,
    reason: (text) => `Grund: „${text}“`,
  },
  fr: {
    notifications: "Notifications",
    empty: "Rien pour l’instant. Les nouvelles réservations et annulations s’affichent ici en direct.",
    markRead: "Tout marquer comme lu",
    unread: (n) => `${n} ${plural(n, { one: "non lue", other: "non lues" })}`,
    created: "Nouvelle réservation",
    cancelled: "Réservation annulée",
    studentBooked: ({ student = "Un élève", when }) => `${student} a réservé votre créneau du ${when}.`,
    youBooked: ({ teacher = "votre moniteur", when }) => `Vous avez réservé un cours avec ${teacher} le ${when}.`,
    studentCancelled: ({ student, when, by }) =>
      `La réservation ${student ? `de ${student}` : "d’un élève"} du ${when} a été annulée${by ? ` par ${by}` : ""}.`,
    yoursCancelled: ({ teacher = "votre moniteur", when, by }) =>
      `Votre réservation avec ${teacher} le ${when} a été annulée${by ? ` par ${by}` : ""}.`,
    reason: (text) => `Motif : « ${text} »`,
  },
  es: {
    notifications: "Notificaciones",
    empty: "Nada todavía. Las nuevas reservas y cancelaciones aparecen aquí en directo.",
    markRead: "Marcar todo como leído",
    unread: (n) => `${n} sin leer`,
    created: "Nueva reserva",
    cancelled: "Reserva cancelada",
    studentBooked: ({ student = "Un alumno", when }) => `${student} reservó tu clase del ${when}.`,
    youBooked: ({ teacher = "tu instructor", when }) => `Reservaste una clase con ${teacher} el ${when}.`,
    studentCancelled: ({ student = "un alumno", when, by }) =>
      `La reserva de ${student} del ${when} fue cancelada${by ? ` por ${by}` : ""}.`,
    yoursCancelled: ({ teacher = "tu instructor", when, by }) =>
      `Tu reserva con ${teacher} el ${when} fue cancelada${by ? ` por ${by}` : ""}.`,
    reason: (text) => `Motivo: «${text}»`,
  },
};

/** The first of the preferred language tags the catalogue has ("de-AT" → "de"), or "en". */
function pickLanguage(preferred) {
  const langs = preferred.map((tag) => tag.toLowerCase().split("-")[0]);
  return langs.find((l) => Object.hasOwn(CATALOGUE, l)) ?? "en";
}

/** The catalogue's language for this viewer: put it in the `lang` of what shows `t()` text. */
export const lang = pickLanguage(navigator.languages?.length ? navigator.languages : [navigator.language]);
const pluralRules = new Intl.PluralRules(lang);

/** The message `key` in the viewer's language; a function entry is called with `arg`. */
export function t(key, arg) {
  const entry = CATALOGUE[lang][key] ?? CATALOGUE.en[key];
  return typeof entry === "function" ? entry(arg) : entry;
}
