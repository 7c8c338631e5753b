//! FHIRPath text to a syntax tree: a lexer and a precedence-climbing parser
//! for the grammar of FHIRPath N1 (literals, paths, indexers, function
//! calls, and every operator with its precedence).

use std::fmt;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `{}`
    Empty,
    Str(String),
    Int(i64),
    /// A decimal literal, its text kept (`1.50` is not `1.5`).
    Dec(serde_json::Number),
    Bool(bool),
    /// `@2015-02-04T14:34:28Z` and the like, without the `@`.
    DateTime(String),
    /// `4 'mg'`, `7 days`: a number and its unit.
    Quantity(serde_json::Number, String),
    /// `$this`
    This,
    /// `%name`
    Variable(String),
    /// A name at the start of a path (evaluated on the focus).
    Name(String),
    /// `target.name`
    Member(Box<Expr>, String),
    /// `name(args)` on the focus, or `target.name(args)`.
    Call(Option<Box<Expr>>, String, Vec<Expr>),
    /// `target[index]`
    Index(Box<Expr>, Box<Expr>),
    /// `-x`
    Negate(Box<Expr>),
    Binary(Box<Expr>, BinOp, Box<Expr>),
    /// `x is Type`, `x as Type`
    TypeOp(Box<Expr>, TypeOp, String),
}

impl Expr {
    /// Collects the names of the functions called anywhere in the expression.
    pub fn functions(&self, out: &mut Vec<String>) {
        match self {
            Expr::Member(t, _) | Expr::Negate(t) | Expr::TypeOp(t, _, _) => t.functions(out),
            Expr::Index(a, b) | Expr::Binary(a, _, b) => {
                a.functions(out);
                b.functions(out);
            }
            Expr::Call(t, name, args) => {
                out.push(name.clone());
                if let Some(t) = t {
                    t.functions(out);
                }
                args.iter().for_each(|a| a.functions(out));
            }
            _ => {}
        }
    }

    /// For an expression evaluated on a resource: adds the top-level
    /// elements it reads to `out`, and says whether that is all it reads.
    /// `false` when it cannot tell (the resource itself, `$this`, a type
    /// name or a function at the root): the caller must give it all.
    pub fn root_elements(&self, out: &mut Vec<String>) -> bool {
        match self {
            Expr::Empty | Expr::Str(_) | Expr::Int(_) | Expr::Dec(_) | Expr::Bool(_) => true,
            Expr::DateTime(_) | Expr::Quantity(..) => true,
            Expr::Name(n) if n.starts_with(|c: char| c.is_ascii_lowercase()) => {
                out.push(n.clone());
                true
            }
            Expr::Member(t, _) | Expr::Negate(t) | Expr::TypeOp(t, _, _) => t.root_elements(out),
            // Arguments of a call on a path apply to that path's items.
            Expr::Call(Some(t), _, _) => t.root_elements(out),
            Expr::Call(None, f, args) if f == "getResourceKey" && args.is_empty() => {
                out.push("id".into());
                true
            }
            Expr::Index(a, b) | Expr::Binary(a, _, b) => {
                a.root_elements(out) && b.root_elements(out)
            }
            _ => false,
        }
    }

    /// Collects the `%name` variables used anywhere in the expression.
    pub fn variables(&self, out: &mut Vec<String>) {
        match self {
            Expr::Variable(v) => out.push(v.clone()),
            Expr::Member(t, _) | Expr::Negate(t) | Expr::TypeOp(t, _, _) => t.variables(out),
            Expr::Index(a, b) | Expr::Binary(a, _, b) => {
                a.variables(out);
                b.variables(out);
            }
            Expr::Call(t, _, args) => {
                if let Some(t) = t {
                    t.variables(out);
                }
                args.iter().for_each(|a| a.variables(out));
            }
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeOp {
    Is,
    As,
}

/// Why an expression does not parse, with the byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.message, self.at + 1)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A `` `delimited` `` identifier: never a keyword.
    Quoted(String),
    Str(String),
    Num(String),
    DateTime(String),
    Special(String),
    Var(String),
    Sym(&'static str),
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if let Some(next) = skip_trivia(text, i)? {
            i = next;
            continue;
        }
        let (tok, next) = token(text, i)?;
        out.push((i, tok));
        i = next;
    }
    Ok(out)
}

fn lex_error(at: usize, message: &str) -> ParseError {
    ParseError {
        at,
        message: message.to_string(),
    }
}

/// The offset after whitespace or a comment at `i`; `None` if a token
/// starts there.
fn skip_trivia(text: &str, i: usize) -> Result<Option<usize>, ParseError> {
    let b = text.as_bytes();
    if b[i].is_ascii_whitespace() {
        return Ok(Some(i + 1));
    }
    if text[i..].starts_with("//") {
        return Ok(Some(scan(b, i, |c| c != b'\n')));
    }
    if text[i..].starts_with("/*") {
        let end = text[i + 2..]
            .find("*/")
            .ok_or_else(|| lex_error(i, "unterminated comment"))?;
        return Ok(Some(i + end + 4));
    }
    Ok(None)
}

/// The offset of the first byte from `i` on that `keep` refuses (or the end).
fn scan(b: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while i < b.len() && keep(b[i]) {
        i += 1;
    }
    i
}

/// The token starting at `i`, and the offset after it.
fn token(text: &str, i: usize) -> Result<(Tok, usize), ParseError> {
    let b = text.as_bytes();
    let c = b[i];
    Ok(match c {
        _ if c.is_ascii_alphabetic() || c == b'_' => {
            let end = scan(b, i, |c| c.is_ascii_alphanumeric() || c == b'_');
            (Tok::Ident(text[i..end].to_string()), end)
        }
        _ if c.is_ascii_digit() => number(text, i),
        b'\'' | b'`' => {
            let (s, next) = unquote(text, i).ok_or_else(|| lex_error(i, "unterminated string"))?;
            let tok = if c == b'\'' {
                Tok::Str(s)
            } else {
                Tok::Quoted(s)
            };
            (tok, next)
        }
        b'@' => {
            // Digits and the separators of a date, time or offset; a `.`
            // only before a digit (fractional seconds), so that
            // `@2015.is(Date)` ends the literal at `.is`.
            let mut end = i + 1;
            while end < b.len() {
                let c = b[end];
                let fraction = c == b'.' && b.get(end + 1).is_some_and(u8::is_ascii_digit);
                if c.is_ascii_digit() || matches!(c, b'-' | b':' | b'+' | b'T' | b'Z') || fraction {
                    end += 1;
                } else {
                    break;
                }
            }
            (Tok::DateTime(text[i + 1..end].to_string()), end)
        }
        b'$' => {
            let end = scan(b, i + 1, |c| c.is_ascii_alphanumeric());
            (Tok::Special(text[i..end].to_string()), end)
        }
        b'%' => variable(text, i)?,
        _ => symbol(text, i)?,
    })
}

/// An integer or decimal; a `.` not followed by a digit is not part of it
/// (`1.toString()`).
fn number(text: &str, start: usize) -> (Tok, usize) {
    let b = text.as_bytes();
    let mut i = scan(b, start, |c| c.is_ascii_digit());
    if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        i = scan(b, i + 1, |c| c.is_ascii_digit());
    }
    (Tok::Num(text[start..i].to_string()), i)
}

/// `%name`, or `%'name'` / `` %`name` `` for names that are no identifiers.
fn variable(text: &str, start: usize) -> Result<(Tok, usize), ParseError> {
    let b = text.as_bytes();
    let i = start + 1;
    if i < b.len() && (b[i] == b'\'' || b[i] == b'`') {
        let (s, next) =
            unquote(text, i).ok_or_else(|| lex_error(i, "unterminated variable name"))?;
        Ok((Tok::Var(s), next))
    } else {
        let end = scan(b, i, |c| {
            c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
        });
        Ok((Tok::Var(text[i..end].to_string()), end))
    }
}

/// An operator or punctuation; two-character ones are tried first.
fn symbol(text: &str, i: usize) -> Result<(Tok, usize), ParseError> {
    const SYMS: [&str; 21] = [
        "<=", ">=", "!=", "!~", "(", ")", "[", "]", "{", "}", ".", ",", "*", "/", "+", "-", "&",
        "|", "<", ">", "=",
    ];
    let c = text.as_bytes()[i];
    let sym = SYMS
        .iter()
        .find(|s| text[i..].starts_with(**s))
        .copied()
        .or_else(|| (c == b'~').then_some("~"))
        .ok_or_else(|| lex_error(i, &format!("unexpected character '{}'", c as char)))?;
    Ok((Tok::Sym(sym), i + sym.len()))
}

/// The text of a quoted string or identifier starting at `i`, unescaped,
/// and the offset after its closing quote.
fn unquote(text: &str, i: usize) -> Option<(String, usize)> {
    let quote = text.as_bytes()[i] as char;
    let mut out = String::new();
    let mut chars = text[i + 1..].char_indices();
    while let Some((j, c)) = chars.next() {
        match c {
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let hex: String =
                            (0..4).filter_map(|_| chars.next().map(|x| x.1)).collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    other => out.push(other),
                }
            }
            c if c == quote => return Some((out, i + 1 + j + 1)),
            c => out.push(c),
        }
    }
    None
}

/// How deep an expression may nest: its tree's height, and the parser's
/// own recursion (parentheses, signs). Evaluating, walking and dropping a
/// tree recurse once per level, and a client's expression must not be
/// able to overflow a thread's stack (found by fuzzing: 20,000 nested
/// parentheses, or `a.a.a...` 30,000 times, crashed the process).
pub const MAX_DEPTH: u32 = 128;

/// Parses a FHIRPath expression.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let toks = lex(text)?;
    let mut p = Parser {
        toks,
        pos: 0,
        len: text.len(),
        nesting: 0,
    };
    let (e, _) = p.expr(0)?;
    if p.pos < p.toks.len() {
        return Err(p.error("unexpected text after the expression"));
    }
    Ok(e)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    len: usize,
    /// Recursive calls under way.
    nesting: u32,
}

/// A parsed expression and its tree's height.
type Parsed = (Expr, u32);

/// Binding power of infix operators, loosest first (FHIRPath §6 order).
fn infix(tok: &Tok) -> Option<(u8, BinOrType)> {
    use BinOp::*;
    let op = match tok {
        Tok::Sym(s) => match *s {
            "*" => (9, BinOrType::Bin(Mul)),
            "/" => (9, BinOrType::Bin(Div)),
            "+" => (8, BinOrType::Bin(Add)),
            "-" => (8, BinOrType::Bin(Sub)),
            "&" => (8, BinOrType::Bin(Concat)),
            "|" => (6, BinOrType::Bin(Union)),
            "<" => (5, BinOrType::Bin(Lt)),
            "<=" => (5, BinOrType::Bin(Le)),
            ">" => (5, BinOrType::Bin(Gt)),
            ">=" => (5, BinOrType::Bin(Ge)),
            "=" => (4, BinOrType::Bin(Eq)),
            "!=" => (4, BinOrType::Bin(Ne)),
            "~" => (4, BinOrType::Bin(Equiv)),
            "!~" => (4, BinOrType::Bin(NotEquiv)),
            _ => return None,
        },
        Tok::Ident(s) => match s.as_str() {
            "div" => (9, BinOrType::Bin(IntDiv)),
            "mod" => (9, BinOrType::Bin(Mod)),
            "is" => (7, BinOrType::Type(TypeOp::Is)),
            "as" => (7, BinOrType::Type(TypeOp::As)),
            "in" => (3, BinOrType::Bin(In)),
            "contains" => (3, BinOrType::Bin(Contains)),
            "and" => (2, BinOrType::Bin(And)),
            "or" => (1, BinOrType::Bin(Or)),
            "xor" => (1, BinOrType::Bin(Xor)),
            "implies" => (0, BinOrType::Bin(Implies)),
            _ => return None,
        },
        _ => return None,
    };
    Some(op)
}

enum BinOrType {
    Bin(BinOp),
    Type(TypeOp),
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.1)
    }

    fn error(&self, message: &str) -> ParseError {
        ParseError {
            at: self.toks.get(self.pos).map_or(self.len, |t| t.0),
            message: message.to_string(),
        }
    }

    fn eat(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, sym: &str) -> Result<(), ParseError> {
        if self.eat(sym) {
            Ok(())
        } else {
            Err(self.error(&format!("expected '{sym}'")))
        }
    }

    /// A tree of `height`, if that is allowed.
    fn within(&self, height: u32) -> Result<u32, ParseError> {
        if height > MAX_DEPTH {
            return Err(self.error(&format!(
                "the expression nests more than {MAX_DEPTH} levels deep"
            )));
        }
        Ok(height)
    }

    /// Runs a recursive step, within the nesting allowed.
    fn nested<T>(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        self.within(self.nesting + 1)?;
        self.nesting += 1;
        let out = step(self);
        self.nesting -= 1;
        out
    }

    /// Operators binding at least as tightly as `min`.
    fn expr(&mut self, min: u8) -> Result<Parsed, ParseError> {
        self.nested(|p| p.infix_chain(min))
    }

    fn infix_chain(&mut self, min: u8) -> Result<Parsed, ParseError> {
        let (mut left, mut height) = self.unary()?;
        while let Some((power, op)) = self.peek().and_then(infix) {
            if power < min {
                break;
            }
            self.pos += 1;
            (left, height) = match op {
                BinOrType::Bin(op) => {
                    let (right, h) = self.expr(power + 1)?;
                    (
                        Expr::Binary(Box::new(left), op, Box::new(right)),
                        height.max(h) + 1,
                    )
                }
                BinOrType::Type(op) => (
                    Expr::TypeOp(Box::new(left), op, self.type_name()?),
                    height + 1,
                ),
            };
            self.within(height)?;
        }
        Ok((left, height))
    }

    fn type_name(&mut self) -> Result<String, ParseError> {
        let mut name = self.identifier()?;
        while self.eat(".") {
            name = format!("{name}.{}", self.identifier()?);
        }
        Ok(name)
    }

    fn identifier(&mut self) -> Result<String, ParseError> {
        match self.peek().cloned() {
            Some(Tok::Ident(s)) | Some(Tok::Quoted(s)) => {
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.error("expected a name")),
        }
    }

    fn unary(&mut self) -> Result<Parsed, ParseError> {
        if self.eat("-") {
            let (e, h) = self.nested(Self::unary)?;
            return Ok((Expr::Negate(Box::new(e)), self.within(h + 1)?));
        }
        if self.eat("+") {
            return self.nested(Self::unary);
        }
        let (mut e, mut height) = self.term()?;
        loop {
            (e, height) = if self.eat(".") {
                let name = self.identifier()?;
                if self.eat("(") {
                    let (args, h) = self.args()?;
                    (Expr::Call(Some(Box::new(e)), name, args), height.max(h) + 1)
                } else {
                    (Expr::Member(Box::new(e), name), height + 1)
                }
            } else if self.eat("[") {
                let (index, h) = self.expr(0)?;
                self.expect("]")?;
                (Expr::Index(Box::new(e), Box::new(index)), height.max(h) + 1)
            } else {
                return Ok((e, height));
            };
            self.within(height)?;
        }
    }

    /// A call's arguments, and the height of the tallest.
    fn args(&mut self) -> Result<(Vec<Expr>, u32), ParseError> {
        let mut args = Vec::new();
        let mut height = 0;
        if self.eat(")") {
            return Ok((args, height));
        }
        loop {
            let (arg, h) = self.expr(0)?;
            args.push(arg);
            height = height.max(h);
            if self.eat(")") {
                return Ok((args, height));
            }
            self.expect(",")?;
        }
    }

    fn term(&mut self) -> Result<Parsed, ParseError> {
        let Some(tok) = self.peek().cloned() else {
            return Err(self.error("the expression ends too soon"));
        };
        self.pos += 1;
        let leaf = match tok {
            Tok::Sym("(") => {
                let e = self.expr(0)?;
                self.expect(")")?;
                return Ok(e);
            }
            Tok::Sym("{") => {
                self.expect("}")?;
                Expr::Empty
            }
            Tok::Str(s) => Expr::Str(s),
            Tok::Num(n) => {
                // A unit after a number makes it a Quantity.
                let unit = match self.peek() {
                    Some(Tok::Str(u)) => Some(u.clone()),
                    Some(Tok::Ident(w))
                        if super::conversions::CALENDAR_UNITS.contains(&w.as_str()) =>
                    {
                        Some(w.clone())
                    }
                    _ => None,
                };
                if let Some(unit) = unit {
                    self.pos += 1;
                    let value =
                        super::decimal::literal(&n).ok_or_else(|| self.error("bad number"))?;
                    return Ok((Expr::Quantity(value, unit), 1));
                }
                match n.parse::<i64>() {
                    Ok(i) if !n.contains('.') => Expr::Int(i),
                    _ => Expr::Dec(
                        super::decimal::literal(&n).ok_or_else(|| self.error("bad number"))?,
                    ),
                }
            }
            Tok::DateTime(d) if d.starts_with('T') && d.contains(['Z', '+', '-']) => {
                self.pos -= 1;
                return Err(self.error("a time literal has no time zone"));
            }
            Tok::DateTime(d) => Expr::DateTime(d),
            Tok::Special(s) if s == "$this" => Expr::This,
            Tok::Special(s) => Expr::Variable(s),
            Tok::Var(v) => Expr::Variable(v),
            Tok::Ident(s) if s == "true" => Expr::Bool(true),
            Tok::Ident(s) if s == "false" => Expr::Bool(false),
            Tok::Ident(s) | Tok::Quoted(s) => {
                if self.eat("(") {
                    let (args, h) = self.args()?;
                    return Ok((Expr::Call(None, s, args), self.within(h + 1)?));
                }
                Expr::Name(s)
            }
            Tok::Sym(_) => {
                self.pos -= 1;
                return Err(self.error("unexpected symbol"));
            }
        };
        Ok((leaf, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_paths() {
        let e = parse("Patient.name.where(use = 'official').family | Patient.id").unwrap();
        let Expr::Binary(left, BinOp::Union, _) = e else {
            panic!("{e:?}")
        };
        assert!(matches!(*left, Expr::Member(_, ref f) if f == "family"));
        let e = parse("a and b or c implies d").unwrap();
        assert!(matches!(e, Expr::Binary(_, BinOp::Implies, _)));
        let e = parse("(Observation.value as Quantity).value > 5.5").unwrap();
        assert!(matches!(e, Expr::Binary(_, BinOp::Gt, _)));
        let e = parse("x.`div`[0] - -1 is System.Integer").unwrap();
        assert!(matches!(e, Expr::TypeOp(_, TypeOp::Is, ref t) if t == "System.Integer"));
        assert_eq!(
            parse("@2020-01-01T10:00:00Z").unwrap(),
            Expr::DateTime("2020-01-01T10:00:00Z".into())
        );
        assert_eq!(parse("'it\\'s'").unwrap(), Expr::Str("it's".into()));
    }

    #[test]
    fn nesting_is_bounded() {
        let parens = format!("{}1{}", "(".repeat(20_000), ")".repeat(20_000));
        let members = format!("a{}", ".a".repeat(30_000));
        let sums = format!("1{}", "+1".repeat(30_000));
        let signs = format!("{}1", "-".repeat(50_000));
        let calls = format!("a{}", ".where(b".repeat(5_000) + &")".repeat(5_000));
        for deep in [parens, members, sums, signs, calls] {
            let e = parse(&deep).unwrap_err();
            assert!(e.message.contains("levels deep"), "{e}");
        }
        // Within the bound, and as deep as real expressions go.
        let ok = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        assert_eq!(parse(&ok).unwrap(), Expr::Int(1));
        assert!(parse(&format!("a{}", ".a".repeat(100))).is_ok());
    }

    #[test]
    fn errors_say_where() {
        for bad in [
            "Patient.", "a +", "where(", "'open", "a ^ b", "f(a,)", "a b",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.at <= bad.len(), "{bad}: {e}");
        }
    }
}
