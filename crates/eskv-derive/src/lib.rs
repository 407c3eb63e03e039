//! `#[derive(DomainEvent)]` for eskv. Use it through the `eskv` facade
//! (feature `derive`, on by default): `#[derive(eskv::DomainEvent)]`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, LitStr, Path};

/// Implements `eskv::DomainEvent` for an enum (one event type per variant)
/// or a struct (one event type).
///
/// # Attributes
///
/// | where | attribute | meaning |
/// |---|---|---|
/// | variant or struct | `#[eskv(type = "CourseDefined")]` | the stored event type; default: the variant (struct) name |
/// | variant or struct | `#[eskv(version = 3)]` | the schema version this event type is written and read at (see `eskv::upcast`); default 1 |
/// | enum or struct | `#[eskv(codec = path::To::Codec)]` | an `eskv::PayloadCodec` for payloads; default `eskv::Json` |
/// | enum or struct | `#[eskv(crate = path::to::eskv)]` | where the `eskv` crate is, if renamed |
/// | field | `#[tag]` | the field's value is a tag |
/// | field | `#[tag("course")]` | the tag `course:<value>` |
/// | field | `#[tags]`, `#[tags("student")]` | one tag per item of a collection (`Vec`, `Option`, sets, ...) |
///
/// Tag fields hold strings: `String`, `&str`, `Box<str>`, `Arc<str>`,
/// `Cow<str>`, `Ulid`, or a type implementing `eskv::TagValue`.
///
/// # Payloads
///
/// The stored payload is the variant's own data: a struct variant's fields
/// as a map (`{"course":"c1","capacity":10}` in JSON), a newtype variant's
/// inner value as it serializes itself, a tuple variant's fields as a
/// sequence, and `{}` for a unit variant (ignored when read). Field types
/// need `serde::Serialize` and `serde::Deserialize`; the enum itself does
/// not. A derived struct is stored as it serializes itself, so it must
/// derive serde too. Reading back picks the variant by the stored event
/// type; `#[serde(...)]` attributes on variant fields are not applied — put
/// such fields in their own struct and use a newtype variant.
///
/// ```
/// use eskv::{DomainEvent, NewEvent};
///
/// #[derive(Debug, PartialEq, DomainEvent)]
/// enum CourseEvent {
///     #[eskv(type = "CourseDefined")]
///     Defined {
///         #[tag("course")]
///         course: String,
///         capacity: u32,
///     },
///     #[eskv(type = "StudentSubscribed")]
///     Subscribed {
///         #[tag("course")]
///         course: String,
///         #[tag("student")]
///         student: String,
///     },
///     Archived(#[tag("course")] String),
/// }
///
/// let e = CourseEvent::Defined { course: "c1".into(), capacity: 10 };
/// let new: NewEvent = e.to_new_event()?;
/// assert_eq!(new.event_type, "CourseDefined");
/// assert_eq!(new.tags, ["course:c1"]);
/// assert_eq!(new.data, br#"{"course":"c1","capacity":10}"#);
/// assert_eq!(CourseEvent::decode_payload("CourseDefined", &new.data)?, e);
///
/// assert_eq!(CourseEvent::EVENT_TYPES, ["CourseDefined", "StudentSubscribed", "Archived"]);
/// let archived = CourseEvent::Archived("c1".into()).to_new_event()?;
/// assert_eq!(archived.data, br#""c1""#);
///
/// // An event type the enum does not know is a typed error.
/// let err = CourseEvent::decode_payload("CourseRenamed", b"{}").unwrap_err();
/// assert!(matches!(err, eskv::DecodeError::UnknownType { .. }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A versioned event type is written at its version, and reading an older
/// one without an upcaster is a typed error (see `eskv::upcast` for the
/// upcasters that bring old events up on every read path):
///
/// ```
/// use eskv::{DecodeError, DomainEvent, RecordedEvent};
///
/// #[derive(Debug, PartialEq, DomainEvent)]
/// enum Account {
///     #[eskv(type = "Deposited", version = 2)]
///     Deposited { cents: i64, currency: String },
///     Closed,
/// }
///
/// let new = Account::Deposited { cents: 500, currency: "EUR".into() }.to_new_event()?;
/// assert_eq!(new.schema_version(), 2);
/// assert_eq!((Account::schema_version_of("Deposited"), Account::schema_version_of("Closed")), (2, 1));
///
/// let old = RecordedEvent {
///     position: 7, id: eskv::Ulid::generate(), event_type: "Deposited".into(), tags: vec![],
///     data: br#"{"amount":5}"#.to_vec(), metadata: Default::default(), recorded_at_ms: 0, stream: None, personal: None,
/// };
/// assert!(matches!(Account::from_recorded(&old), Err(DecodeError::OldVersion { found: 1, expected: 2, .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A struct is one event type, with optional and repeated tags:
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize, eskv::DomainEvent)]
/// #[eskv(type = "MessageSent")]
/// struct MessageSent {
///     #[tag("from")]
///     from: String,
///     #[tags("to")]
///     to: Vec<String>,
///     #[tags("thread")]
///     thread: Option<String>,
///     text: String,
/// }
/// use eskv::DomainEvent as _;
/// let m = MessageSent { from: "a".into(), to: vec!["b".into(), "c".into()], thread: None, text: "hi".into() };
/// assert_eq!(m.to_new_event().unwrap().tags, ["from:a", "to:b", "to:c"]);
/// ```
///
/// # Errors at compile time
///
/// A tag field that is not a string:
///
/// ```compile_fail,E0277
/// #[derive(eskv::DomainEvent)]
/// enum E {
///     Counted { #[tag("n")] n: u32 },
/// }
/// ```
///
/// Two variants with the same event type:
///
/// ```compile_fail
/// #[derive(eskv::DomainEvent)]
/// enum E {
///     #[eskv(type = "Happened")]
///     A {},
///     #[eskv(type = "Happened")]
///     B {},
/// }
/// ```
///
/// An event type eskv would reject (here: a space):
///
/// ```compile_fail
/// #[derive(eskv::DomainEvent)]
/// enum E {
///     #[eskv(type = "Course Defined")]
///     A {},
/// }
/// ```
///
/// A `type` attribute without its name:
///
/// ```compile_fail
/// #[derive(eskv::DomainEvent)]
/// enum E { #[eskv(type)] A {} }
/// ```
///
/// An empty type name, an unknown attribute, both `#[tag]` and `#[tags]`
/// on one field, and generic types are refused too:
///
/// ```compile_fail
/// #[derive(eskv::DomainEvent)]
/// enum E { #[eskv(type = "")] A {} }
/// ```
///
/// ```compile_fail
/// #[derive(eskv::DomainEvent)]
/// enum E { #[eskv(name = "A")] A {} }
/// ```
///
/// ```compile_fail
/// #[derive(eskv::DomainEvent)]
/// enum E { A { #[tag] #[tags] t: String } }
/// ```
///
/// ```compile_fail
/// #[derive(eskv::DomainEvent)]
/// enum E<T> { A { t: T } }
/// ```
#[proc_macro_derive(DomainEvent, attributes(eskv, tag, tags))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// `#[eskv(...)]` options.
#[derive(Default)]
struct Opts {
    type_name: Option<LitStr>,
    version: Option<syn::LitInt>,
    codec: Option<Path>,
    krate: Option<Path>,
}

fn parse_opts(attrs: &[Attribute], container: bool, allow_type: bool) -> syn::Result<Opts> {
    let mut o = Opts::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("eskv")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("type") && allow_type {
                let missing = || {
                    meta.error(
                        "the event type name is missing or not a string: write \
                         #[eskv(type = \"EventName\")], or leave the attribute out to use the variant's (struct's) name",
                    )
                };
                let value = meta.value().map_err(|_| missing())?;
                o.type_name = Some(value.parse().map_err(|_| missing())?);
            } else if meta.path.is_ident("version") && allow_type {
                let lit: syn::LitInt = meta.value()?.parse()?;
                match lit.base10_parse::<u32>() {
                    Ok(v) if v >= 1 => o.version = Some(lit),
                    _ => {
                        return Err(syn::Error::new(
                            lit.span(),
                            "a schema version is a whole number from 1",
                        ))
                    }
                }
            } else if meta.path.is_ident("codec") && container {
                o.codec = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("crate") && container {
                o.krate = Some(meta.value()?.parse()?);
            } else {
                let allowed = match (container, allow_type) {
                    (true, true) => "`type`, `version`, `codec` and `crate`",
                    (true, false) => {
                        "`codec` and `crate` (put `type` and `version` on each variant)"
                    }
                    _ => "`type` and `version`",
                };
                return Err(
                    meta.error(format!("unknown eskv attribute; here eskv takes {allowed}"))
                );
            }
            Ok(())
        })?;
    }
    Ok(o)
}

/// Checks a type name like the store does (see `eskv::store::validate_type`).
fn check_type_name(lit: &LitStr) -> syn::Result<String> {
    let t = lit.value();
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_-.:/".contains(c);
    let problem = if t.is_empty() {
        Some("is empty".to_owned())
    } else if t.len() > 128 {
        Some(format!("is {} bytes, the limit is 128", t.len()))
    } else if !t.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("must start with an ASCII letter".to_owned())
    } else {
        t.chars()
            .find(|&c| !ok_char(c))
            .map(|c| format!("contains {c:?}; use ASCII letters, digits and _ - . : /"))
    };
    match problem {
        Some(p) => Err(syn::Error::new(lit.span(), format!("event type {t:?} {p}"))),
        None => Ok(t),
    }
}

enum TagKind {
    One,
    Many,
}

/// The tag code for each field of `fields`, bound as `__f0, __f1, ...`.
fn tag_code(fields: &Fields, krate: &Tokens) -> syn::Result<Vec<Tokens>> {
    let mut out = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let mut kind: Option<(TagKind, Option<LitStr>)> = None;
        for attr in &f.attrs {
            let k = if attr.path().is_ident("tag") {
                TagKind::One
            } else if attr.path().is_ident("tags") {
                TagKind::Many
            } else {
                continue;
            };
            if kind.is_some() {
                return Err(syn::Error::new(
                    attr.span(),
                    "a field takes one #[tag] or #[tags] attribute",
                ));
            }
            let prefix = match &attr.meta {
                syn::Meta::Path(_) => None,
                syn::Meta::List(_) => {
                    let p: LitStr = attr.parse_args().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "write #[tag], or #[tag(\"prefix\")] for the tag `prefix:<value>`",
                        )
                    })?;
                    if p.value().is_empty() {
                        return Err(syn::Error::new(
                            p.span(),
                            "the tag prefix is empty; write #[tag] for a tag without prefix",
                        ));
                    }
                    Some(p)
                }
                syn::Meta::NameValue(_) => {
                    return Err(syn::Error::new(
                        attr.span(),
                        "write #[tag], or #[tag(\"prefix\")] for the tag `prefix:<value>`",
                    ))
                }
            };
            kind = Some((k, prefix));
        }
        let Some((k, prefix)) = kind else { continue };
        let binding = format_ident!("__f{}", i);
        let prefix = match prefix {
            Some(p) => quote!(::core::option::Option::Some(#p)),
            None => quote!(::core::option::Option::None),
        };
        let ty = &f.ty;
        out.push(match k {
            TagKind::One => quote!(#krate::__private::tag::<#ty>(&mut __tags, #prefix, #binding);),
            TagKind::Many => {
                quote_spanned!(ty.span()=> #krate::__private::tags(&mut __tags, #prefix, #binding);)
            }
        });
    }
    Ok(out)
}

/// `{ a: __f0, b: __f1 }`, `(__f0, __f1)` or nothing.
fn bind_pattern(fields: &Fields) -> Tokens {
    let names = (0..fields.len()).map(|i| format_ident!("__f{}", i));
    match fields {
        Fields::Named(n) => {
            let idents = n.named.iter().map(|f| f.ident.as_ref().expect("named"));
            quote!({ #(#idents: #names),* })
        }
        Fields::Unnamed(_) => quote!(( #(#names),* )),
        Fields::Unit => quote!(),
    }
}

fn expand(input: DeriveInput) -> syn::Result<Tokens> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "#[derive(DomainEvent)] does not support generic types; use concrete field types",
        ));
    }
    let name = &input.ident;
    let is_struct = matches!(input.data, Data::Struct(_));
    let opts = parse_opts(&input.attrs, true, is_struct)?;
    let krate = opts
        .krate
        .as_ref()
        .map_or_else(|| quote!(::eskv), |p| quote!(#p));
    let codec = opts
        .codec
        .as_ref()
        .map_or_else(|| quote!(#krate::Json), |p| quote!(#p));
    let serde_crate = quote!(#krate::__private::serde).to_string();
    let codec_call = quote!(<<Self as #krate::DomainEvent>::Codec as #krate::PayloadCodec>);

    let mut type_names: Vec<String> = Vec::new();
    let mut event_type_arms = Vec::new();
    let mut tag_arms = Vec::new();
    let mut encode_arms = Vec::new();
    let mut decode_arms = Vec::new();
    let mut version_arms = Vec::new();
    let mut version_arm = |t: &str, v: &Option<syn::LitInt>| {
        if let Some(v) = v {
            version_arms.push(quote!(#t => #v,));
        }
    };

    let check_unique = |lit: &LitStr, names: &mut Vec<String>| -> syn::Result<String> {
        let t = check_type_name(lit)?;
        if names.contains(&t) {
            return Err(syn::Error::new(
                lit.span(),
                format!("event type {t:?} is used twice; each variant needs its own type name"),
            ));
        }
        names.push(t.clone());
        Ok(t)
    };

    match &input.data {
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span(),
                "#[derive(DomainEvent)] works on enums and structs, not unions",
            ))
        }
        Data::Struct(s) => {
            let lit = opts
                .type_name
                .clone()
                .unwrap_or_else(|| LitStr::new(&name.to_string(), name.span()));
            let t = check_unique(&lit, &mut type_names)?;
            version_arm(&t, &opts.version);
            let pat = bind_pattern(&s.fields);
            let tags = tag_code(&s.fields, &krate)?;
            event_type_arms.push(quote!(_ => #t,));
            tag_arms.push(quote!(Self #pat => { #(#tags)* }));
            encode_arms.push(quote!(_ => #codec_call::encode(self),));
            decode_arms.push(quote!(
                #t => #krate::typed::decode_with::<#codec, Self, Self>(event_type, data),
            ));
        }
        Data::Enum(e) => {
            if e.variants.is_empty() {
                return Err(syn::Error::new(
                    name.span(),
                    "an event enum needs at least one variant",
                ));
            }
            for v in &e.variants {
                let vo = parse_opts(&v.attrs, false, true)?;
                let vname = &v.ident;
                let lit = vo
                    .type_name
                    .unwrap_or_else(|| LitStr::new(&vname.to_string(), vname.span()));
                let t = check_unique(&lit, &mut type_names)?;
                version_arm(&t, &vo.version);
                let pat = bind_pattern(&v.fields);
                let tags = tag_code(&v.fields, &krate)?;
                event_type_arms.push(quote!(Self::#vname { .. } => #t,));
                tag_arms.push(quote!(Self::#vname #pat => { #(#tags)* }));
                let binds: Vec<_> = (0..v.fields.len())
                    .map(|i| format_ident!("__f{}", i))
                    .collect();
                let tys: Vec<_> = v.fields.iter().map(|f| &f.ty).collect();
                match &v.fields {
                    Fields::Named(n) => {
                        let idents: Vec<_> = n
                            .named
                            .iter()
                            .map(|f| f.ident.clone().expect("named"))
                            .collect();
                        encode_arms.push(quote!(Self::#vname #pat => {
                            #[derive(#krate::__private::serde::Serialize)]
                            #[serde(crate = #serde_crate)]
                            struct __EskvPayload<'__a> { #(#idents: &'__a #tys),* }
                            #codec_call::encode(&__EskvPayload { #(#idents: #binds),* })
                        }));
                        decode_arms.push(quote!(#t => {
                            #[derive(#krate::__private::serde::Deserialize)]
                            #[serde(crate = #serde_crate)]
                            struct __EskvPayload { #(#idents: #tys),* }
                            let __p = #krate::typed::decode_with::<#codec, __EskvPayload, Self>(event_type, data)?;
                            ::core::result::Result::Ok(Self::#vname { #(#idents: __p.#idents),* })
                        }));
                    }
                    Fields::Unnamed(_) if v.fields.len() == 1 => {
                        let ty = tys[0];
                        encode_arms.push(quote!(Self::#vname(__f0) => #codec_call::encode(__f0),));
                        decode_arms.push(quote!(#t => ::core::result::Result::Ok(Self::#vname(
                            #krate::typed::decode_with::<#codec, #ty, Self>(event_type, data)?
                        )),));
                    }
                    Fields::Unnamed(_) => {
                        let idx = (0..v.fields.len()).map(syn::Index::from);
                        encode_arms.push(quote!(Self::#vname #pat => {
                            #[derive(#krate::__private::serde::Serialize)]
                            #[serde(crate = #serde_crate)]
                            struct __EskvPayload<'__a>( #(&'__a #tys),* );
                            #codec_call::encode(&__EskvPayload( #(#binds),* ))
                        }));
                        decode_arms.push(quote!(#t => {
                            #[derive(#krate::__private::serde::Deserialize)]
                            #[serde(crate = #serde_crate)]
                            struct __EskvPayload( #(#tys),* );
                            let __p = #krate::typed::decode_with::<#codec, __EskvPayload, Self>(event_type, data)?;
                            ::core::result::Result::Ok(Self::#vname( #(__p.#idx),* ))
                        }));
                    }
                    Fields::Unit => {
                        encode_arms.push(quote!(Self::#vname => {
                            #[derive(#krate::__private::serde::Serialize)]
                            #[serde(crate = #serde_crate)]
                            struct __EskvPayload {}
                            #codec_call::encode(&__EskvPayload {})
                        }));
                        decode_arms.push(quote!(#t => ::core::result::Result::Ok(Self::#vname),));
                    }
                }
            }
        }
    }

    let encode_body = quote!(match self { #(#encode_arms)* });
    let versions = if version_arms.is_empty() {
        quote!()
    } else {
        quote! {
            fn schema_version_of(event_type: &str) -> u32 {
                match event_type {
                    #(#version_arms)*
                    _ => 1,
                }
            }
        }
    };
    Ok(quote! {
        #[automatically_derived]
        impl #krate::DomainEvent for #name {
            const EVENT_TYPES: &'static [&'static str] = &[#(#type_names),*];
            type Codec = #codec;

            fn event_type(&self) -> &'static str {
                match self { #(#event_type_arms)* }
            }

            #versions

            #[allow(unused_variables)]
            fn tags(&self) -> ::std::vec::Vec<::std::string::String> {
                let mut __tags = ::std::vec::Vec::new();
                match self { #(#tag_arms)* }
                __tags
            }

            #[allow(unused_variables)]
            fn encode_payload(&self) -> #krate::Result<::std::vec::Vec<u8>> {
                #encode_body
            }

            fn decode_payload(
                event_type: &str,
                data: &[u8],
            ) -> ::core::result::Result<Self, #krate::DecodeError> {
                match event_type {
                    #(#decode_arms)*
                    other => ::core::result::Result::Err(#krate::DecodeError::unknown_type::<Self>(other)),
                }
            }
        }
    })
}

/// The messages the derive gives for bad input, pinned here (a doc test's
/// `compile_fail` only shows that compiling fails, not what it says).
#[cfg(test)]
mod messages {
    use super::expand;
    use syn::parse_quote;

    fn error_of(input: syn::DeriveInput) -> String {
        match expand(input) {
            Ok(_) => panic!("the derive accepted bad input"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_missing_type_name_says_how_to_write_it() {
        for input in [
            parse_quote!(
                enum E {
                    #[eskv(type)]
                    A {},
                }
            ),
            parse_quote!(
                enum E {
                    #[eskv(type = 3)]
                    A {},
                }
            ),
            parse_quote!(
                #[eskv(type)]
                struct S {}
            ),
        ] {
            let m = error_of(input);
            assert!(
                m.contains("event type name is missing or not a string"),
                "{m}"
            );
            assert!(m.contains("#[eskv(type = \"EventName\")]"), "{m}");
        }
    }

    #[test]
    fn bad_type_names_are_named_with_the_problem() {
        let m = error_of(parse_quote!(
            enum E {
                #[eskv(type = "")]
                A {},
            }
        ));
        assert!(m.contains("event type \"\" is empty"), "{m}");
        let m = error_of(parse_quote!(
            enum E {
                #[eskv(type = "Course Defined")]
                A {},
            }
        ));
        assert!(m.contains("contains ' '"), "{m}");
        let m = error_of(parse_quote!(
            enum E {
                #[eskv(type = "1st")]
                A {},
            }
        ));
        assert!(m.contains("must start with an ASCII letter"), "{m}");
        let m = error_of(parse_quote!(
            enum E {
                #[eskv(type = "Happened")]
                A {},
                #[eskv(type = "Happened")]
                B {},
            }
        ));
        assert!(m.contains("is used twice"), "{m}");
    }

    #[test]
    fn bad_attributes_say_what_is_allowed() {
        let m = error_of(parse_quote!(
            enum E {
                #[eskv(name = "A")]
                A {},
            }
        ));
        assert!(m.contains("unknown eskv attribute"), "{m}");
        assert!(m.contains("`type` and `version`"), "{m}");
        let m = error_of(parse_quote!(
            enum E {
                A {
                    #[tag]
                    #[tags]
                    t: String,
                },
            }
        ));
        assert!(m.contains("one #[tag] or #[tags]"), "{m}");
        let m = error_of(parse_quote!(
            enum E {
                A {
                    #[tag("")]
                    t: String,
                },
            }
        ));
        assert!(m.contains("tag prefix is empty"), "{m}");
        let m = error_of(parse_quote!(
            enum E {
                #[eskv(version = 0)]
                A {},
            }
        ));
        assert!(m.contains("whole number from 1"), "{m}");
        let m = error_of(parse_quote!(
            enum E<T> {
                A { t: T },
            }
        ));
        assert!(m.contains("does not support generic types"), "{m}");
        let m = error_of(parse_quote!(
            enum E {}
        ));
        assert!(m.contains("at least one variant"), "{m}");
    }
}
